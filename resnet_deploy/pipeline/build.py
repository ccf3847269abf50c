"""`resnet-deploy build`: every stage in order, from weights to a validated, timed set of engines."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..artifacts import OnnxArtifact, staged_output_dir
from ..calibration.calibrate import CALIB_NAME, Calibration, CalibrationSet, calibrate
from ..calibration.fp16 import convert_fp16
from ..calibration.graph import excluded_nodes, load_onnx
from ..calibration.quantize import quantize_int8
from ..config import BuildConfig, Precision, Target
from ..data import Dataset, SkipSummary, first_images, open_dataset
from ..engines.pytorch import PyTorchRunner
from ..models import load_model
from ..progress import Progress
from .benchmark import benchmark_all
from .export import export_onnx
from .fold import fold_and_verify, save_folded
from .plan import build_engines, check_engine_options, plan_engines
from .report import Report, environment, read_report
from .validate import validate_all

CHECK_IMAGES = 32  # real images used by the fold and export checks

FOLDED_NAME = "model.folded.safetensors"
FP32_NAME = "model.fp32.onnx"
FP16_NAME = "model.fp16.onnx"
INT8_TRT_FP16_NAME = "model.int8-tensorrt.fp16.onnx"  # INT8 + FP16 elsewhere: for TensorRT only


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


def _data_summary(dataset: Dataset) -> dict[str, object]:
    skipped = SkipSummary.of(dataset)
    return {
        "path": str(dataset.source),
        "candidates": len(dataset),
        "labels": dataset.has_labels,
        "skipped": skipped.count,
        "skipped_examples": skipped.examples,
    }


def _warnings(val: Dataset, calibration_set: CalibrationSet | None) -> list[str]:
    if calibration_set is None:
        return []
    shared = calibration_set.overlap(val)
    if not shared:
        return []
    return [
        f"{shared} of the {len(calibration_set.dataset)} calibration images are also validation images "
        f"({calibration_set.dataset.source} and {val.source}): INT8/FP16 accuracy is measured on data the ranges "
        "were fitted to; give separate --calib-data and --val-data"
    ]


def _reduced_precision(
    config: BuildConfig, fp32: OnnxArtifact, calibration_set: CalibrationSet, stage: Path, timer: StageTimer, progress: Progress
) -> tuple[list[OnnxArtifact], list[OnnxArtifact], Calibration]:
    """Calibrate once, then the FP16 model and one INT8 model per target, all from the same statistics.

    Returns the models to validate, the models made for TensorRT only, and the calibration.
    """
    options = config.calibration
    excluded_nodes(load_onnx(fp32.path), options.exclude_layers)  # a pattern matching nothing fails before calibrating
    with timer("calibrate"):
        calibration = calibrate(fp32, calibration_set, options, config.threads, progress)
        calibration.write(stage / CALIB_NAME)
    made: list[OnnxArtifact] = []
    if Precision.FP16 in config.precisions:
        with timer("fp16"):
            made.append(convert_fp16(fp32, calibration, stage / FP16_NAME, options.exclude_layers))
        progress.log(f"FP16: {made[-1].details['fp16']['fp16_nodes']} nodes in FP16 -> {FP16_NAME}")
    extra: list[OnnxArtifact] = []
    if Precision.INT8 in config.precisions:
        example = first_images(calibration_set.dataset, 1)
        for target in config.targets:
            name = int8_name(target)
            # TensorRT wants FP16 between the quantized layers when FP16 is asked too; ONNX Runtime's CPU EP
            # cannot run such a graph exactly, so it validates the FP32-elsewhere twin (same Q/DQ).
            fp16_twin = stage / INT8_TRT_FP16_NAME if target is Target.TENSORRT and Precision.FP16 in config.precisions else None
            with timer(f"quantize-{target}"):
                validated, *twin = quantize_int8(
                    fp32, calibration, target, stage / name, example, options.exclude_layers, fp16_twin
                )
            made.append(validated)
            extra += twin
            progress.log(f"INT8 ({target}): {validated.details['quantization']['quantized_nodes']} quantized nodes -> {name}")
    return made, extra, calibration


def int8_name(target: Target) -> str:
    return f"model.int8-{target.value}.onnx"


def build(config: BuildConfig, progress: Progress = Progress()) -> Report:
    baseline = read_report(config.baseline, "baseline") if config.baseline is not None else None  # bad input: fail first
    timer = StageTimer()
    profile = check_engine_options(config)
    reduced = any(p is not Precision.FP32 for p in config.precisions)
    with timer("load"):
        model = load_model(config.arch, config.weights, config.num_classes, config.input_size)
        val = open_dataset(config.val_data, model.preprocess, option="--val-data")
        calib = open_dataset(config.calib_data, model.preprocess, option="--calib-data") if config.calib_data else None
        check_images = first_images(calib or val, CHECK_IMAGES)
        calibration_set = CalibrationSet.draw(calib, config.calibration.size, config.calibration.seed) if reduced else None
    progress.log(f"loaded {model.arch} ({model.num_classes} classes, input {'x'.join(map(str, model.preprocess.input_size))})")
    warnings = _warnings(val, calibration_set)

    with staged_output_dir(config.out, config.force) as stage:
        with timer("fold"):
            folded, fold = fold_and_verify(model, check_images)
            save_folded(folded, model, fold, stage / FOLDED_NAME)
        progress.log(f"folded {fold.folded} BatchNorm layers, {len(fold.remaining)} remain")
        with timer("export"):
            fp32 = export_onnx(folded, model.info, check_images, stage / FP32_NAME, config.opset, fold.as_dict())
        progress.log(f"exported ONNX opset {fp32.opset}, parity {fp32.details['parity']['max_abs_diff']:.2e}")

        artifacts = [fp32] if Precision.FP32 in config.precisions else []
        calibration, tensorrt_only = None, []
        if calibration_set is not None:
            made, tensorrt_only, calibration = _reduced_precision(config, fp32, calibration_set, stage, timer, progress)
            artifacts += made
        specs = plan_engines(artifacts, config, tensorrt_only)
        with timer("engines"):
            results, maybe_runners, engine_notes = build_engines(specs, config, stage, profile, progress)
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
            warnings=warnings,
            calibration=None if calibration is None else _calibration_summary(calibration, config.out.absolute() / CALIB_NAME),
            notes=([] if calibration is None else list(calibration.notes))
            + [
                f"{a.path.name}: the INT8 model for TensorRT with FP16 between the quantized layers; not run here "
                f"(ONNX Runtime's CPU EP does not execute FP16 Q/DQ graphs exactly); its Q/DQ and scales are those of "
                f"{a.details['quantization']['same_qdq_as']}, validated above"
                for a in tensorrt_only
            ]
            + engine_notes,
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


def _calibration_summary(calibration: Calibration, path: Path) -> dict[str, object]:
    return {
        **calibration.summary(),
        "data": calibration.data,
        "tensors": len(calibration.ranges),
        "seconds": round(calibration.seconds, 3),
        "path": str(path),
    }
