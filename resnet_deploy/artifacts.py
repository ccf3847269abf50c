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
from typing import Any

from .errors import UserError
from .files import atomic_path, sha256_file, write_json_atomic, write_text_atomic  # noqa: F401 - write_text_atomic for cli.py
from .options import check_range

SIDECAR_SUFFIX = ".json"


def sidecar_path(path: Path) -> Path:
    return Path(str(path) + SIDECAR_SUFFIX)


def write_with_sidecar(path: Path, write: Callable[[Path], None], metadata: dict[str, Any]) -> None:
    """Write a file through `write(tmp_path)` atomically, then its sidecar (with the file's sha256)."""
    with atomic_path(path) as tmp:
        write(tmp)
        digest = sha256_file(tmp)
    write_json_atomic(sidecar_path(path), {**metadata, "sha256": digest})


def write_onnx_artifact(path: Path, produce: Callable[[Path], "OnnxArtifact"]) -> "OnnxArtifact":
    """`produce(tmp_path)` writes the model and returns its artifact; the file and its sidecar land atomically."""
    with atomic_path(path) as tmp:
        artifact = produce(tmp)
        digest = sha256_file(tmp)
    write_json_atomic(sidecar_path(path), {**artifact.metadata(), "sha256": digest})
    return artifact


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


class _Described:
    """A file described by a sidecar: every dataclass field but `path`, plus its `KIND`."""

    KIND = "?"

    def metadata(self) -> dict[str, Any]:
        return {"kind": self.KIND, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "path"}}


@dataclass(frozen=True)
class FoldedModelArtifact(_Described):
    """A BN-folded model: a safetensors state_dict plus what is needed to rebuild the module."""

    path: Path
    arch: str
    num_classes: int
    preprocess: dict[str, Any]
    weights_sha256: str
    fold: dict[str, Any]
    class_names: list[str] | None = None
    origin: dict[str, Any] = dataclasses.field(default_factory=dict)  # checkpoint used, preprocessing/class names source

    KIND = "folded-model"

    def info(self):
        from .data import Preprocess
        from .models import ModelInfo

        names = None if self.class_names is None else tuple(self.class_names)
        return ModelInfo(
            self.arch, self.num_classes, Preprocess.from_dict(self.preprocess), self.weights_sha256, names, self.origin
        )

    @classmethod
    def read(cls, path: Path) -> "FoldedModelArtifact":
        return _read_artifact(cls, path, lambda meta: {"weights_sha256": meta["weights_sha256"], "fold": dict(meta["fold"])})


@dataclass(frozen=True)
class OnnxArtifact(_Described):
    """An ONNX model (FP32, FP16 or INT8 Q/DQ) with what produced it."""

    path: Path
    arch: str
    num_classes: int
    preprocess: dict[str, Any]
    precision: str
    target: str | None
    input_name: str
    output_name: str
    opset: int
    source_sha256: str  # the weights (FP32) or the FP32 ONNX it was derived from
    details: dict[str, Any]
    class_names: list[str] | None = None
    origin: dict[str, Any] = dataclasses.field(default_factory=dict)

    KIND = "onnx-model"

    @classmethod
    def read(cls, path: Path) -> "OnnxArtifact":
        return _read_artifact(
            cls,
            path,
            lambda meta: {
                "precision": meta["precision"],
                "target": meta.get("target"),
                "input_name": meta["input_name"],
                "output_name": meta["output_name"],
                "opset": int(meta["opset"]),
                "source_sha256": meta["source_sha256"],
                "details": dict(meta.get("details", {})),
            },
        )


def _read_artifact(cls, path: Path, fields: Callable[[dict[str, Any]], dict[str, Any]]):
    """An artifact from its checked sidecar: the model fields shared by all kinds, plus `fields(meta)`.

    The sha256 only proves the file is the one described, not that the description is sane: a missing
    or mistyped field is a UserError, and what a stage builds a model from (arch, classes, preprocessing)
    is range-checked before anything is allocated from it.
    """
    from .data import Preprocess

    meta = read_sidecar(path, cls.KIND)
    try:
        artifact = cls(
            path=Path(path),
            arch=meta["arch"],
            num_classes=int(meta["num_classes"]),
            preprocess=meta["preprocess"],
            class_names=meta.get("class_names"),
            origin=meta.get("origin", {}),
            **fields(meta),
        )
        if not isinstance(artifact.arch, str):
            raise TypeError(f"arch {artifact.arch!r}")
        Preprocess.from_dict(artifact.preprocess)
        check_model_fields(artifact.num_classes, artifact.class_names, artifact.origin)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UserError(f"{sidecar_path(path)} has a missing or invalid field ({exc!r}); rerun the {cls.KIND} stage") from None
    check_range("num_classes", artifact.num_classes, f"{sidecar_path(path)}: num_classes")
    return artifact


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


@dataclass(frozen=True)
class EngineArtifact(_Described):
    """A serialized TensorRT engine; its sidecar is the manifest that says where and how it was built.

    The manifest is read before the engine is deserialized, so an engine built for another TensorRT
    version or GPU is refused with a message naming both, instead of TensorRT's deserialization error.
    """

    path: Path
    arch: str
    num_classes: int
    preprocess: dict[str, Any]
    precision: str
    target: str | None
    input_name: str
    output_name: str
    tensorrt_version: str
    gpu: dict[str, Any]  # name, compute_capability ("8.6"), driver
    build: dict[str, Any]  # the flags used: strongly_typed, tf32, workspace, optimization level, compatibility, ...
    profile: dict[str, int]  # min / opt / max batch size of the one optimization profile
    source_onnx: str
    source_onnx_sha256: str
    build_seconds: float
    built_at: str  # UTC, ISO 8601
    class_names: list[str] | None = None
    origin: dict[str, Any] = dataclasses.field(default_factory=dict)

    KIND = "tensorrt-engine"

    @classmethod
    def read(cls, path: Path) -> "EngineArtifact":
        meta = read_sidecar(path, cls.KIND)
        optional = {"class_names": None, "origin": {}}  # manifests written before class names travelled
        try:
            fields = {f.name: meta.get(f.name, optional[f.name]) if f.name in optional else meta[f.name]
                      for f in dataclasses.fields(cls) if f.name != "path"}  # fmt: skip
            check_model_fields(int(meta["num_classes"]), fields["class_names"], fields["origin"])
        except KeyError as exc:
            raise UserError(f"{sidecar_path(path)} lacks {exc}; rebuild the engine with this resnet-deploy") from None
        except (TypeError, ValueError) as exc:
            raise UserError(f"{sidecar_path(path)} has an invalid field ({exc}); rebuild the engine") from None
        return cls(path=Path(path), **fields)
