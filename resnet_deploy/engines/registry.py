"""The engine registry: every engine kind, one line each, in the order their engines are planned and reported.

The planners (the build's pipeline/plan.py, validate and bench, serve-check, benchmarks/) ask it which engines
run a model (`plan`) and for their runners (`runner`); what an engine kind implements is in kind.py. Adding an
engine is one module that defines an `EngineKind` (and its Runner) plus its line in KINDS.
"""

from __future__ import annotations

from pathlib import Path

from .base import Runner
from .kind import EngineKind, EngineSettings, EngineSpec, Model, ModelFile
from .openvino import OpenVINOKind
from .ort import OnnxRuntimeKind, describe_onnx
from .pytorch import PyTorchKind, PyTorchOptions
from .trt import TensorRTKind

KINDS: tuple[EngineKind, ...] = (
    OnnxRuntimeKind(),
    OpenVINOKind(),
    TensorRTKind(),
    PyTorchKind(),
)


def kind(name: str) -> EngineKind:
    """The kind called `name` (a spec's `kind`)."""
    for entry in KINDS:
        if entry.name == name:
            return entry
    raise KeyError(f"no engine kind {name!r}; known: {', '.join(k.name for k in KINDS)}")


def plan(model: Model, settings: EngineSettings) -> list[EngineSpec]:
    """The engines that run `model`, kind by kind in registry order (only the kinds `settings.kinds` names)."""
    return [spec for entry in KINDS for spec in entry.plan(model, settings)]


def runner(spec: EngineSpec) -> Runner:
    """The runner of one planned engine (for a kind that builds, after `kind(spec.kind).build`)."""
    return kind(spec.kind).runner(spec)


def read_model(path: Path) -> ModelFile:
    """An ONNX file and what it is: precision and target from its sidecar, else from its graph."""
    precision, target = describe_onnx(path)
    return ModelFile(Path(path), precision, target)


def reference_runner(module, weights: Path, threads: int | None = None) -> Runner:
    """The PyTorch reference every engine is compared with (pytorch-fp32): `module`, loaded from `weights` (its spec
    carries the module: the reference runs no file). The build, validate and bench take it from here."""
    settings = EngineSettings(("pytorch",), threads=threads, options=(PyTorchOptions(module),))
    return runner(kind("pytorch").spec(ModelFile(Path(weights), "fp32"), settings))
