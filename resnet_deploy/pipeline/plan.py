"""Which engines a build makes: each ONNX model on the CPU engines of `--engines`, TensorRT engines for its models.

ONNX Runtime and OpenVINO (`--engines`, both by default when OpenVINO is installed) run every validated
model, so each ONNX file is checked on the CPU. With `--openvino-bf16` OpenVINO also runs the FP32 model in
bfloat16 (`openvino-bf16`). For
`--target tensorrt`, TensorRT builds an engine from each model made for it: those without a target (FP32,
FP16) and the tensorrt-target INT8 (or its FP16-elsewhere twin, when FP16 was asked too); a model
quantized for another target is not TensorRT's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..artifacts import OnnxArtifact
from ..config import BuildConfig, Engine, Target
from ..engines.base import Runner
from ..engines.openvino import OpenVINORunner, require_bf16
from ..engines.ort import OrtRunner, OrtTensorrtOptions, ort_backend_label
from ..engines.trt import BatchProfile, TensorRTRunner, build_engine, engine_file_name, missing_message, missing_requirements
from ..errors import MissingDependency, UserError
from ..progress import Progress
from ..reports.report import EngineResult, engine_name


@dataclass(frozen=True)
class EngineSpec:
    """One engine to validate and time: a model file and the backend that runs it."""

    artifact: OnnxArtifact
    backend: str  # "onnxruntime" (or "onnxruntime-cuda", ... naming the execution provider), "openvino" or "tensorrt"
    final_path: Path  # the file the engine runs, in --out: the ONNX for ONNX Runtime and OpenVINO, the .engine for TensorRT
    compute_precision: str | None = None  # when the engine computes in another precision than the model's (bf16)

    @property
    def precision(self) -> str:
        return self.compute_precision or self.artifact.precision

    @property
    def name(self) -> str:
        return engine_name(self.backend, self.precision, self.artifact.target)

    @property
    def is_tensorrt(self) -> bool:
        return self.backend == "tensorrt"

    def result(self) -> EngineResult:
        """The report row, before validation and benchmark fill in the numbers."""
        details = dict(self.artifact.details)
        quantization = details.pop("quantization", None) or details.pop("fp16", None)
        a = self.artifact
        return EngineResult(
            self.name, self.backend, self.precision, a.target, str(self.final_path), details=details, quantization=quantization
        )

    def runner(self, config: BuildConfig, folder: Path) -> Runner:
        """The runner of this engine, whose file is in `folder` (the staging folder during a build)."""
        if self.is_tensorrt:
            return TensorRTRunner(folder / self.final_path.name, name=self.name, cuda_graph=config.tensorrt.cuda_graph)
        if self.backend == Engine.OPENVINO.value:
            a = self.artifact
            return OpenVINORunner(a.path, self.name, self.precision, a.target, config.threads, config.openvino)
        return OrtRunner(
            self.artifact.path,
            name=self.name,
            precision=self.artifact.precision,
            target=self.artifact.target,
            providers=config.providers,
            threads=config.threads,
            tensorrt=ort_tensorrt_options(config.benchmark.batch_sizes, config.batch_size, config.tensorrt.opt_batch_size),
        )


def ort_tensorrt_options(batch_sizes: Sequence[int], largest: int = 1, opt: int | None = None) -> OrtTensorrtOptions:
    """ONNX Runtime's TensorRT provider profile: opt as for TensorRT's own engines (from the benchmarked sizes),
    min 1 and max the largest batch it will see (`largest`: validation's batch size; its last batch may be short)."""
    profile = BatchProfile.from_batch_sizes(tuple(batch_sizes), opt)
    return OrtTensorrtOptions(profile=(1, profile.opt, max(profile.max, largest)))


def plan_engines(
    models: Sequence[OnnxArtifact], config: BuildConfig, tensorrt_twins: Sequence[OnnxArtifact] = ()
) -> list[EngineSpec]:
    """Engines for `models` (validated on the CPU engines); `tensorrt_twins` replace their namesakes for TensorRT.

    A twin is a model made for TensorRT only (the INT8 Q/DQ graph with FP16 between the quantized layers),
    whose `same_qdq_as` names the validated model it stands in for.
    """
    out = config.out.absolute()
    ort = ort_backend_label(config.providers)
    twins = {t.details["quantization"]["same_qdq_as"]: t for t in tensorrt_twins}
    specs = []
    for model in models:
        if Engine.ONNXRUNTIME in config.engines:
            specs.append(EngineSpec(model, ort, out / model.path.name))
        if Engine.OPENVINO in config.engines:
            specs.append(EngineSpec(model, Engine.OPENVINO.value, out / model.path.name))
            if config.openvino.bf16 and model.precision == "fp32":
                specs.append(EngineSpec(model, Engine.OPENVINO.value, out / model.path.name, compute_precision="bf16"))
        if Target.TENSORRT in config.targets and model.target in (None, Target.TENSORRT.value):
            source = twins.get(model.path.name, model)
            engine = engine_file_name(model.precision)
            if ".best-effort." in model.path.name:  # a mixed-precision search missed its target: say so here too
                engine = engine.replace(".engine", ".best-effort.engine")
            specs.append(EngineSpec(source, "tensorrt", out / engine))
    return specs


def build_engines(
    specs: list[EngineSpec], config: BuildConfig, folder: Path, profile: BatchProfile, progress: Progress
) -> tuple[list[EngineResult], list[Runner | None], list[str]]:
    """Build the TensorRT engines of `specs` in `folder`; (results, runners, notes) in the order of `specs`.

    Without TensorRT or a GPU the TensorRT engines are not built: their result says why (`error`), they
    have no runner, and one note says so (`--require-engine` has already refused this case).
    """
    results, runners, skipped = [], [], []
    missing = missing_requirements() if any(spec.is_tensorrt for spec in specs) else []
    for spec in specs:
        result = spec.result()
        if spec.is_tensorrt and missing:
            result.path, result.error = None, f"not built: {missing_message(missing)}"
            skipped.append(spec.name)
            results.append(result)
            runners.append(None)
            continue
        if spec.is_tensorrt:
            progress.log(f"building TensorRT engine {spec.final_path.name} (batch profile {profile.as_dict()})")
            engine = build_engine(spec.artifact, folder / spec.final_path.name, config.tensorrt, profile)
            result.details = {**result.details, "engine": engine.metadata()}
        results.append(result)
        runners.append(spec.runner(config, folder))
    notes = []
    if skipped:
        notes.append(
            f"{', '.join(skipped)} not built: {missing_message(missing)}; the ONNX files were validated on the CPU engines "
            "(--require-engine makes this an error)"
        )
    return results, runners, notes


def check_engine_options(config: BuildConfig) -> BatchProfile:
    """Fail before writing anything: --require-engine without TensorRT/GPU, bf16 on a CPU without it, a bad profile."""
    if config.openvino.bf16:
        require_bf16("--openvino-bf16")
    wants_tensorrt = Target.TENSORRT in config.targets
    if config.require_engine and not wants_tensorrt:
        raise UserError("--require-engine applies to TensorRT engines; add --target tensorrt")
    if wants_tensorrt and config.require_engine:
        missing = missing_requirements()
        if missing:
            raise MissingDependency(f"--require-engine: {missing_message(missing)}")
    return BatchProfile.from_batch_sizes(config.benchmark.batch_sizes, config.tensorrt.opt_batch_size)
