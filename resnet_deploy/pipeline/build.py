"""`resnet-deploy build`: every stage in order, from weights to a validated, timed set of engines."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..artifacts import OnnxArtifact, staged_output_dir
from ..config import BuildConfig
from ..data import Dataset, SkipSummary, first_images, open_dataset
from ..engines.base import Runner
from ..engines.ort import OrtRunner
from ..engines.pytorch import PyTorchRunner
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
    backend: str
    final_path: Path

    @property
    def name(self) -> str:
        return engine_name(self.backend, self.artifact.precision, self.artifact.target)

    def runner(self, config: BuildConfig) -> Runner:
        return OrtRunner(
            self.artifact.path,
            name=self.name,
            precision=self.artifact.precision,
            target=self.artifact.target,
            providers=config.providers,
            threads=config.threads,
        )


def _data_summary(dataset: Dataset) -> dict[str, object]:
    skipped = SkipSummary.of(dataset)
    return {
        "path": str(dataset.source),
        "candidates": len(dataset),
        "labels": dataset.has_labels,
        "skipped": skipped.count,
        "skipped_examples": skipped.examples,
    }


def build(config: BuildConfig, progress: Progress = Progress()) -> Report:
    baseline = read_report(config.baseline, "baseline") if config.baseline is not None else None  # bad input: fail first
    timer = StageTimer()
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

        engines = [EngineSpec(fp32, "onnxruntime", config.out.absolute() / FP32_NAME)]
        results = [
            EngineResult(
                e.name, e.backend, e.artifact.precision, e.artifact.target, str(e.final_path), details=e.artifact.details
            )
            for e in engines
        ]
        reference_runner = PyTorchRunner(model.module, threads=config.threads)
        runners = [spec.runner(config) for spec in engines]
        with timer("validate"):
            accuracies = validate_all(reference_runner, runners, val, model.num_classes, config.batch_size, progress)
        sample = first_images(val, max(config.benchmark.batch_sizes))
        with timer("benchmark"):
            reference_latency, *latencies = benchmark_all([reference_runner, *runners], sample, config.benchmark, progress)
        for result, runner, accuracy, latency in zip(results, runners, accuracies, latencies):
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
