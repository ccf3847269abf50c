"""Which engines a build makes: the engine registry's plan for each model, placed in --out.

ONNX Runtime and OpenVINO (`--engines`, both by default when OpenVINO is installed) run every validated
model, so each ONNX file is checked on the CPU. With `--openvino-bf16` OpenVINO also runs the FP32 model in
bfloat16 (`openvino-bf16`). For `--target tensorrt`, TensorRT builds an engine from each model made for it
(engines/trt.py, `TensorRTKind`). What each kind plans is its own (engines/registry.py); this module only places
the files, lets a twin stand in for its namesake, and builds the engines of the kinds that compile a file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ..artifacts import OnnxArtifact
from ..config import BuildConfig, Target
from ..engines import registry
from ..engines.base import Runner
from ..engines.kind import EngineSpec
from ..engines.openvino import require_bf16
from ..engines.trt import BatchProfile
from ..errors import MissingDependency, UserError
from ..progress import Progress
from ..reports.report import EngineResult


@dataclass(frozen=True)
class PlannedEngine:
    """One engine of a build: the registry's spec and the file it leaves in --out."""

    spec: EngineSpec
    final_path: Path  # in --out: the ONNX for ONNX Runtime and OpenVINO, the compiled file (.engine) for TensorRT

    @property
    def artifact(self) -> OnnxArtifact:
        return self.spec.model

    @property
    def backend(self) -> str:
        return self.spec.backend

    @property
    def precision(self) -> str:
        return self.spec.precision

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def builds(self) -> bool:
        return registry.kind(self.spec.kind).builds

    def result(self) -> EngineResult:
        """The report row, before validation and benchmark fill in the numbers."""
        details = dict(self.artifact.details)
        quantization = details.pop("quantization", None) or details.pop("fp16", None)
        a = self.artifact
        return EngineResult(
            self.name, self.backend, self.precision, a.target, str(self.final_path), details=details, quantization=quantization
        )

    def runner(self, config: BuildConfig, folder: Path) -> Runner:
        """The runner of this engine, whose file is in `folder` (the staging folder during a build); the settings
        from `config` are in the spec already."""
        return registry.runner(self.spec.in_folder(folder) if self.builds else self.spec)


def plan_engines(
    models: Sequence[OnnxArtifact], config: BuildConfig, tensorrt_twins: Sequence[OnnxArtifact] = ()
) -> list[PlannedEngine]:
    """Engines for `models` (validated on the CPU engines); `tensorrt_twins` replace their namesakes as the source
    of the engines that compile a file for the twin's target.

    A twin is a model made for TensorRT only (the INT8 Q/DQ graph with FP16 between the quantized layers),
    whose `same_qdq_as` names the validated model it stands in for.
    """
    out = config.out.absolute()
    settings = config.engine_settings()
    twins = {t.details["quantization"]["same_qdq_as"]: t for t in tensorrt_twins}
    planned = []
    for model in models:
        for spec in registry.plan(model, settings):
            kind, twin = registry.kind(spec.kind), twins.get(model.path.name)
            if twin is not None and kind.builds and twin.target == kind.native_target:
                spec = replace(spec, model=twin)
            planned.append(PlannedEngine(spec, out / spec.file.name))
    return planned


def build_engines(
    planned: list[PlannedEngine], config: BuildConfig, folder: Path, progress: Progress
) -> tuple[list[EngineResult], list[Runner | None], list[str]]:
    """Build the engines of `planned` whose kind compiles a file, in `folder`; (results, runners, notes) in order.

    A kind that cannot run here (TensorRT without TensorRT or a GPU) builds nothing: its results say why
    (`error`), they have no runner, and one note per kind says so (`--require-engine` has already refused this case).
    """
    results, runners = [], []
    missing: dict[str, str | None] = {}  # kind -> why it cannot run here (asked once per kind)
    skipped: dict[str, list[str]] = {}
    for engine in planned:
        result, kind = engine.result(), registry.kind(engine.spec.kind)
        if engine.builds:
            if kind.name not in missing:
                missing[kind.name] = kind.available()
            if missing[kind.name]:
                result.path, result.error = None, f"not built: {missing[kind.name]}"
                skipped.setdefault(kind.name, []).append(engine.name)
                results.append(result)
                runners.append(None)
                continue
            profile = dict(zip(("min", "opt", "max"), engine.spec.profile or ()))
            progress.log(f"building {kind.title} engine {engine.final_path.name} (batch profile {profile})")
            result.details = {**result.details, "engine": kind.build(engine.spec, folder)}
        results.append(result)
        runners.append(engine.runner(config, folder))
    notes = [
        f"{', '.join(names)} not built: {missing[name]}; the ONNX files were validated on the CPU engines "
        "(--require-engine makes this an error)"
        for name, names in skipped.items()
    ]
    return results, runners, notes


def check_engine_options(config: BuildConfig) -> None:
    """Fail before writing anything: --require-engine without TensorRT/GPU, bf16 on a CPU without it, a bad profile."""
    if config.openvino.bf16:
        require_bf16("--openvino-bf16")
    wants_tensorrt = Target.TENSORRT in config.targets
    if config.require_engine and not wants_tensorrt:
        raise UserError("--require-engine applies to TensorRT engines; add --target tensorrt")
    if wants_tensorrt and config.require_engine:
        missing = registry.kind(Target.TENSORRT.value).available()
        if missing:
            raise MissingDependency(f"--require-engine: {missing}")
    BatchProfile.from_batch_sizes(config.benchmark.batch_sizes, config.tensorrt.opt_batch_size)  # refuses a bad --opt-batch-size
