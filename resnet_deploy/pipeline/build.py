"""`resnet-deploy build`: every stage in order, from weights to a validated, timed set of engines."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..artifacts import OnnxArtifact, staged_output_dir
from ..config import BuildConfig, Target
from ..data import Dataset, SkipSummary, first_images, open_dataset
from ..engines.base import Runner
from ..engines.ort import OrtRunner, ort_backend_label
from ..engines.pytorch import PyTorchRunner
from ..engines.trt import BatchProfile, TensorRTRunner, build_engine, engine_file_name, missing_message, missing_requirements
from ..errors import MissingDependency, UserError
from ..models import load_model
from ..progress import Progress
from .benchmark import benchmark_all
from .export import export_onnx
from .fold import fold_and_verify, save_folded
from .report import EngineResult, Report, engine_name, environment, read_report
from .validate import validate_all

CHECK_IMAGES = 32  # real images used by the fold and export checks

FOLDED_NAME = "model.folded.safetensors"
FP32_NAME = "model.fp32.onnx"


class StageTimer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 3)


@dataclass(frozen=True)
class EngineSpec:
    """One engine to validate and time: a model file and the backend that runs it."""

    artifact: OnnxArtifact
    backend: str  # "onnxruntime" (or "onnxruntime-cuda", ... naming the execution provider) or "tensorrt"
    final_path: Path  # the file the engine runs, in --out: the ONNX for ONNX Runtime, the .engine for TensorRT

    @property
    def name(self) -> str:
        return engine_name(self.backend, self.artifact.precision, self.artifact.target)

    @property
    def is_tensorrt(self) -> bool:
        return self.backend == "tensorrt"

    def result(self) -> EngineResult:
        a = self.artifact
        return EngineResult(self.name, self.backend, a.precision, a.target, str(self.final_path), details=a.details)

    def runner(self, config: BuildConfig, folder: Path) -> Runner:
        """The runner of this engine, whose file is in `folder` (the staging folder during a build)."""
        if self.is_tensorrt:
            return TensorRTRunner(folder / self.final_path.name, name=self.name, cuda_graph=config.tensorrt.cuda_graph)
        return OrtRunner(
            self.artifact.path,
            name=self.name,
            precision=self.artifact.precision,
            target=self.artifact.target,
            providers=config.providers,
            threads=config.threads,
        )


def plan_engines(models: Sequence[OnnxArtifact], config: BuildConfig) -> list[EngineSpec]:
    """Which backend runs which ONNX model.

    ONNX Runtime runs every model, so each ONNX file is validated, on the CPU too. For `--target tensorrt`,
    TensorRT builds an engine from each model made for it: those without a target (FP32, FP16) and the
    tensorrt-target INT8; a model quantized for another target is not TensorRT's.
    """
    out = config.out.absolute()
    ort = ort_backend_label(config.providers)
    specs = []
    for model in models:
        specs.append(EngineSpec(model, ort, out / model.path.name))
        if Target.TENSORRT in config.targets and model.target in (None, Target.TENSORRT.value):
            specs.append(EngineSpec(model, "tensorrt", out / engine_file_name(model.precision)))
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
            f"{', '.join(skipped)} not built: {missing_message(missing)}; the ONNX files were validated on ONNX Runtime "
            "(--require-engine makes this an error)"
        )
    return results, runners, notes


def _data_summary(dataset: Dataset) -> dict[str, object]:
    skipped = SkipSummary.of(dataset)
    return {
        "path": str(dataset.source),
        "candidates": len(dataset),
        "labels": dataset.has_labels,
        "skipped": skipped.count,
        "skipped_examples": skipped.examples,
    }


def _check_engine_options(config: BuildConfig) -> BatchProfile:
    """Fail before writing anything: --require-engine without TensorRT/GPU, a bad profile."""
    wants_tensorrt = Target.TENSORRT in config.targets
    if config.require_engine and not wants_tensorrt:
        raise UserError("--require-engine applies to TensorRT engines; add --target tensorrt")
    if wants_tensorrt and config.require_engine:
        missing = missing_requirements()
        if missing:
            raise MissingDependency(f"--require-engine: {missing_message(missing)}")
    return BatchProfile.from_batch_sizes(config.benchmark.batch_sizes, config.tensorrt.opt_batch_size)


def build(config: BuildConfig, progress: Progress = Progress()) -> Report:
    baseline = read_report(config.baseline, "baseline") if config.baseline is not None else None  # bad input: fail first
    timer = StageTimer()
    profile = _check_engine_options(config)
    with timer("load"):
        model = load_model(config.arch, config.weights, config.num_classes, config.input_size)
        val = open_dataset(config.val_data, model.preprocess, option="--val-data")
        calib = open_dataset(config.calib_data, model.preprocess, option="--calib-data") if config.calib_data else None
        check_images = first_images(calib or val, CHECK_IMAGES)
    progress.log(f"loaded {model.arch} ({model.num_classes} classes, input {'x'.join(map(str, model.preprocess.input_size))})")

    with staged_output_dir(config.out, config.force) as stage:
        with timer("fold"):
            folded, fold = fold_and_verify(model, check_images)
            save_folded(folded, model, fold, stage / FOLDED_NAME)
        progress.log(f"folded {fold.folded} BatchNorm layers, {len(fold.remaining)} remain")
        with timer("export"):
            fp32 = export_onnx(folded, model.info, check_images, stage / FP32_NAME, config.opset, fold.as_dict())
        progress.log(f"exported ONNX opset {fp32.opset}, parity {fp32.details['parity']['max_abs_diff']:.2e}")

        specs = plan_engines([fp32], config)
        with timer("engines"):
            results, maybe_runners, notes = build_engines(specs, config, stage, profile, progress)
        runnable = [(result, runner) for result, runner in zip(results, maybe_runners) if runner is not None]
        runners = [runner for _, runner in runnable]
        reference_runner = PyTorchRunner(model.module, threads=config.threads)
        with timer("validate"):
            accuracies = validate_all(reference_runner, runners, val, model.num_classes, config.batch_size, progress)
        sample = first_images(val, max(config.benchmark.batch_sizes))
        with timer("benchmark"):
            reference_latency, *latencies = benchmark_all([reference_runner, *runners], sample, config.benchmark, progress)
        for (result, runner), accuracy, latency in zip(runnable, accuracies, latencies):
            result.accuracy, result.latency = accuracy, latency
            result.details = {**result.details, "runtime": runner.describe()}

        ref_top1 = next((r.accuracy.top1_ref for r in results if r.accuracy and r.accuracy.top1_ref is not None), None)
        ref_top5 = next((r.accuracy.top5_ref for r in results if r.accuracy and r.accuracy.top5_ref is not None), None)
        fold_dict = fold.as_dict()
        report = Report(
            model=model.info.as_dict(),
            fold={**fold_dict, "path": str(config.out.absolute() / FOLDED_NAME)},
            export={
                "path": str(config.out.absolute() / FP32_NAME),
                "opset": fp32.opset,
                "max_abs_diff": fp32.details["parity"]["max_abs_diff"],
                "max_rel_diff": fp32.details["parity"]["max_rel_diff"],
                "batchnorm_nodes": fp32.details["batchnorm_nodes"],
            },
            reference={
                "name": reference_runner.name,
                "latency": [lat.as_dict() for lat in reference_latency],
                "top1": ref_top1,
                "top5": ref_top5,
            },
            engines=results,
            data={"val": _data_summary(val), **({"calib": _data_summary(calib)} if calib else {})},
            environment=environment(config.threads),
            stages=timer.seconds,
            notes=notes,
        )
        if config.gates is not None:
            from ..gates import evaluate

            report.gates = evaluate(
                config.gates,
                report.as_dict(),
                baseline,
                report_label=str(config.out.absolute() / "report.json"),
                baseline_label=None if config.baseline is None else str(config.baseline),
            )
        report.write(stage)
    return report
