"""What passes between stages: files on disk with a JSON sidecar (`<file>.json`) of metadata.

Every file is written atomically (files.py), so an interrupted run never leaves a half-written file
under its final name.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from .errors import UserError
from .files import atomic_path, sha256_file, write_json_atomic
from .options import NUM_CLASSES

SIDECAR_SUFFIX = ".json"


def sidecar_path(path: Path) -> Path:
    return Path(str(path) + SIDECAR_SUFFIX)


def write_artifact(path: Path, produce: Callable[[Path], A]) -> A:
    """The one writer: `produce(tmp_path)` writes the file and returns its artifact; file and sidecar land atomically."""
    with atomic_path(path) as tmp:
        artifact = produce(tmp)
        digest = sha256_file(tmp)
    write_sidecar(artifact.path, artifact.metadata(), digest)
    return artifact


def write_with_sidecar(path: Path, write: Callable[[Path], None], metadata: dict[str, Any]) -> None:
    """`write_artifact` for a description known before the file is written: `write(tmp_path)`, then the sidecar."""
    with atomic_path(path) as tmp:
        write(tmp)
        digest = sha256_file(tmp)
    write_sidecar(path, metadata, digest)


def write_sidecar(path: Path, metadata: dict[str, Any], digest: str) -> None:
    """The sidecar of a file already in place: its description plus the sha256 `read_sidecar` checks."""
    write_json_atomic(sidecar_path(path), {**metadata, "sha256": digest})


def read_sidecar(path: Path, kind: str) -> dict[str, Any]:
    """The sidecar of `path`, checked to be of `kind` and to match the file's sha256."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; give the path of a file written by resnet-deploy")
    side = sidecar_path(path)
    if not side.is_file():
        raise UserError(f"{side} is missing: {path} was not written by resnet-deploy {kind}; rerun that stage")
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{side} is not valid JSON ({exc}); rerun the {kind} stage") from None
    if not isinstance(meta, dict) or meta.get("kind") != kind:
        raise UserError(f"{side} does not describe a {kind} artifact; give the output of the {kind} stage")
    if meta.get("sha256") != sha256_file(path):
        raise UserError(f"{path} changed after it was written (sha256 differs from {side.name}); rerun the {kind} stage")
    return meta


@dataclass(frozen=True, kw_only=True)
class Artifact:
    """A file described by a sidecar: the model signature every artifact embeds, plus its kind's own fields.

    The signature says what the model is whatever the file's form (folded state_dict, ONNX, engine): its
    architecture, classes (and their names), preprocessing and where those came from, and, once it is a
    graph, its input and output names. The sidecar holds every dataclass field but `path`, plus `kind`.
    """

    KIND: ClassVar[str] = "?"
    REDO: ClassVar[str] = "rerun that stage"  # how to fix a bad sidecar, in its messages

    path: Path
    arch: str
    num_classes: int
    preprocess: dict[str, Any]
    class_names: list[str] | None = None
    origin: dict[str, Any] = dataclasses.field(default_factory=dict)  # checkpoint used, preprocessing/class names source

    def metadata(self) -> dict[str, Any]:
        return {"kind": self.KIND, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "path"}}

    @classmethod
    def read(cls: type[A], path: Path) -> A:
        """The artifact from its checked sidecar (`read_sidecar`), every field checked the same way for every kind.

        The sha256 only proves the file is the one described, not that the description is sane: a missing
        or mistyped field is a UserError, and what a stage builds a model from (arch, classes, preprocessing)
        is range-checked before anything is allocated from it. Fields with a default may be absent (sidecars
        written before they existed).
        """
        from .data import Preprocess

        meta = read_sidecar(path, cls.KIND)
        try:
            values = {}
            for f in dataclasses.fields(cls):
                if f.name == "path":
                    continue
                if f.name in meta:
                    values[f.name] = meta[f.name]
                elif f.default is not dataclasses.MISSING:
                    values[f.name] = f.default
                elif f.default_factory is not dataclasses.MISSING:
                    values[f.name] = f.default_factory()
                else:
                    raise KeyError(f.name)
            for name, convert in _CONVERT.items():
                if name in values:
                    values[name] = convert(values[name])
            artifact = cls(path=Path(path), **values)
            if not isinstance(artifact.arch, str):
                raise TypeError(f"arch {artifact.arch!r}")
            Preprocess.from_dict(artifact.preprocess)
            check_model_fields(artifact.num_classes, artifact.class_names, artifact.origin)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UserError(f"{sidecar_path(path)} has a missing or invalid field ({exc!r}); {cls.REDO}") from None
        NUM_CLASSES.check(artifact.num_classes, f"{sidecar_path(path)}: num_classes")
        return artifact


A = TypeVar("A", bound=Artifact)

# How a sidecar's JSON values become field values (the rest are taken as they are, then checked).
_CONVERT: dict[str, Callable[[Any], Any]] = {"num_classes": int, "opset": int, "fold": dict, "details": dict}


@dataclass(frozen=True, kw_only=True)
class FoldedModelArtifact(Artifact):
    """A BN-folded model: a safetensors state_dict plus what is needed to rebuild the module."""

    KIND: ClassVar[str] = "folded-model"
    REDO: ClassVar[str] = "rerun the folded-model stage"

    weights_sha256: str
    fold: dict[str, Any]

    def info(self):
        from .data import Preprocess
        from .models import ModelInfo

        names = None if self.class_names is None else tuple(self.class_names)
        return ModelInfo(
            self.arch, self.num_classes, Preprocess.from_dict(self.preprocess), self.weights_sha256, names, self.origin
        )


@dataclass(frozen=True, kw_only=True)
class GraphArtifact(Artifact):
    """A model as a graph (ONNX, or an engine built from one): the signature gains its precision and I/O names."""

    precision: str
    target: str | None = None
    input_name: str
    output_name: str


@dataclass(frozen=True, kw_only=True)
class OnnxArtifact(GraphArtifact):
    """An ONNX model (FP32, FP16 or INT8 Q/DQ) with what produced it."""

    KIND: ClassVar[str] = "onnx-model"
    REDO: ClassVar[str] = "rerun the onnx-model stage"

    opset: int
    source_sha256: str  # the weights (FP32) or the FP32 ONNX it was derived from
    details: dict[str, Any] = dataclasses.field(default_factory=dict)


def check_model_fields(num_classes: int, class_names: Any, origin: Any) -> None:
    """A sidecar's class names (one string per class, or null) and origin (an object); TypeError/ValueError if not."""
    if class_names is not None:
        if not isinstance(class_names, list) or not all(isinstance(n, str) for n in class_names):
            raise TypeError("class_names must be a list of strings")
        if len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names for {num_classes} classes")
    if not isinstance(origin, dict):
        raise TypeError("origin must be an object")


# --------------------------------------------------------------------------------------- user ONNX


def read_onnx(path: Path, option: str = "--onnx"):
    """A user's ONNX file parsed (external data not loaded) and checked before anything else reads it.

    Every reader of a user's ONNX (ONNX Runtime sessions, describe, quantize) goes through here first:
    the file must parse as a model with a graph, and each tensor stored in external data must name a
    regular file inside the model's folder (relative, no symlink, no hard link) and a byte range
    inside that file. onnx's own checker refuses bad locations but not bad ranges; ONNX Runtime refuses
    both, with messages that do not say what to do. Raises UserError naming the tensor.
    """
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{option} {path} does not exist; give the path of an ONNX model")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError, onnx others, for a non-ONNX file
        raise UserError(f"{option} {path} is not an ONNX model ({type(exc).__name__}); give a .onnx file") from None
    graph = proto.graph
    if proto.ir_version < 1 or not proto.opset_import or not graph.node or not graph.input or not graph.output:
        raise UserError(f"{option} {path} is not an ONNX model (no graph with inputs, nodes and outputs); give a .onnx file")
    folder = path.absolute().parent
    real_folder = os.path.realpath(folder)
    for tensor in _all_tensors(graph, proto.functions):
        if not uses_external_data(tensor):
            continue
        try:
            info = ExternalDataInfo(tensor)
        except ValueError as exc:
            raise UserError(
                f"{option} {path}: external data of tensor {tensor.name!r} is invalid ({exc}); re-export the model"
            ) from None
        problem = _external_data_problem(folder, real_folder, info.location, info.offset, info.length)
        if problem:
            raise UserError(
                f"{option} {path}: tensor {tensor.name!r} has external data {info.location!r} {problem}; "
                "refused: keep the model's data files as regular files beside it (or re-export it)"
            )
    return proto


def _all_tensors(graph, functions=()) -> Iterator:
    """Every TensorProto of a graph: initializers and node attributes, subgraphs and functions included."""
    import onnx

    yield from graph.initializer
    for node in [*graph.node, *(n for f in functions for n in f.node)]:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_tensors(attr.g)
            for sub in attr.graphs:
                yield from _all_tensors(sub)


def _external_data_problem(folder: Path, real_folder: str, location: str, offset: int | None, length: int | None) -> str | None:
    """Why an external-data location is unsafe or unusable, or None when it is fine."""
    if not location:
        return "without a file name"
    if os.path.isabs(location):
        return "as an absolute path"
    if ".." in Path(location).parts:
        return "pointing outside the model's folder ('..')"
    real = os.path.realpath(folder / location)
    if real != os.path.join(real_folder, os.path.normpath(location)):
        outside = not real.startswith(real_folder + os.sep)
        return "pointing outside the model's folder" if outside else "reached through a symbolic link"
    try:
        st = os.stat(real)
    except OSError as exc:
        return f"that cannot be read ({exc.strerror})"
    if not stat.S_ISREG(st.st_mode):
        return "that is not a regular file"
    if st.st_nlink > 1:
        return "that has several hard links"
    start = offset or 0
    if start > st.st_size or (length is not None and start + length > st.st_size):
        return f"with a byte range (offset {start}, length {length}) beyond the end of the file ({st.st_size} bytes)"
    return None


@dataclass(frozen=True, kw_only=True)
class EngineArtifact(GraphArtifact):
    """A serialized TensorRT engine; its sidecar is the manifest that says where and how it was built.

    The manifest is read before the engine is deserialized, so an engine built for another TensorRT
    version or GPU is refused with a message naming both, instead of TensorRT's deserialization error.
    """

    KIND: ClassVar[str] = "tensorrt-engine"
    REDO: ClassVar[str] = "rebuild the engine with this resnet-deploy"

    tensorrt_version: str
    gpu: dict[str, Any]  # name, compute_capability ("8.6"), driver
    build: dict[str, Any]  # the flags used: strongly_typed, tf32, workspace, optimization level, compatibility, ...
    profile: dict[str, int]  # min / opt / max batch size of the one optimization profile
    source_onnx: str
    source_onnx_sha256: str
    build_seconds: float
    built_at: str  # UTC, ISO 8601
