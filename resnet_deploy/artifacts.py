"""What passes between stages: files on disk with a JSON sidecar (`<file>.json`) of metadata.

Every file is written atomically (a temporary file in the same folder, then a rename), so an
interrupted run never leaves a half-written file under its final name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import signal
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError

SIDECAR_SUFFIX = ".json"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _umask() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed to `path`, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


# A JSON array of numbers as json.dumps(indent=2) writes it: one number a line. Strings cannot hold a raw
# newline, so this never matches inside a string value.
_NUMBER = r"-?(?:\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|NaN|Infinity)"
_NUMBER_LIST = re.compile(rf"\[\n\s+({_NUMBER}(?:,\n\s+{_NUMBER})*)\n\s*\]")


def dumps_json(data: Any) -> str:
    """Indented JSON with lists of numbers (shapes, latency samples) kept on one line."""
    text = json.dumps(data, indent=2, sort_keys=False, default=_json_default)
    return _NUMBER_LIST.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text) + "\n"


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, dumps_json(data))


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "value"):  # enums
        return value.value
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def read_user_text(path: Path, label: str, hint: str) -> str:
    """The UTF-8 text of a file the user named; a problem is a one-line UserError: '<label> <problem>; <hint>'."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{label} does not exist; {hint}") from None
    except IsADirectoryError:
        raise UserError(f"{label} is a folder; {hint}") from None
    except UnicodeDecodeError:
        raise UserError(f"{label} is not UTF-8 text; {hint}") from None
    except OSError as exc:
        raise UserError(f"cannot read {label} ({exc.strerror}); check the path and its permissions") from None


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
    from .config import check_range
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


# ------------------------------------------------------------------------------------- output folder


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back while a few renames run, then deliver them: never a half-done swap."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    wanted = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda signum, frame: received.append(signum)) for s in wanted}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        for s in received[:1]:
            signal.raise_signal(s)


@contextlib.contextmanager
def staged_output_dir(out: Path, force: bool, option: str = "--out") -> Iterator[Path]:
    """Build into a hidden staging folder beside `out`; move it into place only when all went well.

    A lock beside `out` makes a second build into the same folder refuse instead of mixing files.
    An interrupted or failed build leaves `out` as it was (absent, or the previous complete build).
    """
    import fcntl
    import shutil

    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise UserError(f"{option} {out} is a file; give a folder path")
    if out.exists() and not force:
        raise UserError(f"{option} {out} already exists; pass --force to replace it, or choose another folder")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        lock_file = open(parent / f".{out.name}.lock", "a+")  # noqa: SIM115 - held for the whole build
    except OSError as exc:
        raise UserError(f"cannot write beside {option} {out} ({exc.strerror}); choose a writable folder") from None
    with lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"another resnet-deploy {'build' if option == '--out' else 'run'} is writing {out}; wait for it to finish or "
                f"choose another {option}"
            ) from None
        # Left by a killed build (we hold the lock): a staging folder, or the previous build set aside
        # by a build killed (SIGKILL) between its two renames, which is put back.
        for stale in parent.glob(f".{out.name}.old-*"):
            if (stale / "previous").is_dir() and not out.exists():
                os.replace(stale / "previous", out)
            shutil.rmtree(stale, ignore_errors=True)
        for stale in parent.glob(f".{out.name}.partial-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if out.exists() and not force:  # again under the lock: another build may have finished meanwhile
            raise UserError(f"{option} {out} already exists; pass --force to replace it, or choose another folder")
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=parent))
        os.chmod(staging, 0o777 & ~_umask())
        try:
            yield staging
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=parent))
            try:
                with _signals_deferred():  # out is always the previous build or the new one, never neither
                    if out.exists():
                        os.replace(out, old / "previous")
                    os.replace(staging, out)
            finally:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
