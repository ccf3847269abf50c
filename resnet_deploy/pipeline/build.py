"""`resnet-deploy build`: every stage in order, from weights to a validated, timed set of engines."""

from __future__ import annotations

import contextlib
import functools
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from ..artifacts import OnnxArtifact
from ..calibration.calibrate import CALIB_NAME, Calibration, CalibrationSet
from ..calibration.fp16 import convert_fp16
from ..calibration.quantize import ModelOptSession, judged_exactly, tensorrt_int8_meanwhile
from ..calibration.search import MixedPrecision
from ..config import BuildConfig, Precision, Target
from ..data import Dataset, ImageFolderDataset, SkipSummary, check_labels, first_images, open_dataset
from ..engines import registry
from ..engines.base import Runner
from ..engines.ort import exact_runner
from ..files import staged_output_dir
from ..isa import host_isa
from ..isa import mismatch as cpu_mismatch
from ..models import LoadedModel, load_model
from ..progress import Progress
from ..reports.environment import environment
from ..reports.report import EngineResult, Report
from ..reports.schema import read_report
from ..reports.write import write_report
from .benchmark import benchmark_all
from .export import export_onnx
from .fold import fold_and_verify, save_folded
from .kernels import broken_model, kernel_loss
from .plan import PlannedEngine, build_engines, check_engine_options, plan_engines
from .quantize import (
    CalibrationImages,
    baseline_runner,
    calibrate_model,
    fixed_nodes,
    prepare_calibration,
    quantize_one,
    target_check,
)
from .validate import Accuracy, validate_all

CHECK_IMAGES = 32  # real images used by the fold and export checks

FOLDED_NAME = "model.folded.safetensors"
FP32_NAME = "model.fp32.onnx"
FP16_NAME = "model.fp16.onnx"


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
    by_name = isinstance(dataset, ImageFolderDataset) and dataset.by_name
    return {
        "path": str(dataset.source),
        "candidates": len(dataset),
        "labels": dataset.has_labels,
        **({"labels_by": "class names" if by_name else "sorted folders"} if isinstance(dataset, ImageFolderDataset) else {}),
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


@dataclass
class ReducedPrecision:
    """What the precision stages made: models to validate, models for TensorRT only, the calibration, and the
    mixed-precision search of each INT8 target that had an accuracy target (by the file names of its models)."""

    made: list[OnnxArtifact]
    tensorrt_only: list[OnnxArtifact]
    calibration: Calibration
    searches: dict[str, MixedPrecision] = field(default_factory=dict)


def _reduced_precision(*args, modelopt: ModelOptSession | None = None) -> ReducedPrecision:
    """Calibrate once, then the FP16 model and one INT8 model per target, all from the same statistics
    (with an accuracy target, each INT8 model is the mixed-precision search's, search.py)."""
    with contextlib.ExitStack() as stack:
        return _reduced_precision_in(stack, *args, modelopt=modelopt)


def _reduced_precision_in(
    stack: contextlib.ExitStack,
    config: BuildConfig,
    fp32: OnnxArtifact,
    images: CalibrationImages,
    stage: Path,
    work: Path,
    timer: StageTimer,
    progress: Progress,
    modelopt: ModelOptSession | None = None,
) -> ReducedPrecision:
    options = config.calibration
    fixed = fixed_nodes(fp32, options)  # a pattern matching nothing fails early
    # the tensorrt-target model, made in the ModelOpt worker while the others are made here; its graph work first,
    # during the calibration
    in_worker = modelopt is not None  # started for exactly this case (_modelopt_session)
    meanwhile = None
    if in_worker:
        modelopt.prepare(fp32.path, fp32.input_name, fixed, images.example)
    with timer("calibrate"):
        calibrated = calibrate_model(fp32, images, options, fixed, stage / CALIB_NAME, config.threads, progress)
    calibration = calibrated.calibration
    result = ReducedPrecision([], [], calibration)
    if in_worker:
        twin = Precision.FP16 in config.precisions  # started before the FP16 conversion, which runs meanwhile too
        meanwhile = stack.enter_context(tensorrt_int8_meanwhile(fp32, calibration, fixed, images.example, twin, modelopt))
    if Precision.FP16 in config.precisions:
        with timer("fp16"):
            result.made.append(convert_fp16(fp32, calibration, stage / FP16_NAME, options.exclude_layers))
        progress.log(f"FP16: {result.made[-1].details['fp16']['fp16_nodes']} nodes in FP16 -> {FP16_NAME}")
    if Precision.INT8 not in config.precisions:
        return result
    for target in config.targets:
        # TensorRT gets FP16 between the quantized layers (and in the nodes a search leaves out) when FP16 is asked
        # or an accuracy target is set; ONNX Runtime's CPU EP cannot run such a graph exactly, so it validates the
        # FP32-elsewhere twin (same Q/DQ).
        twin = target is Target.TENSORRT and (Precision.FP16 in config.precisions or config.accuracy_target is not None)
        path = stage / int8_name(target)
        if config.accuracy_target is None:
            with timer(f"quantize-{target}"), tempfile.TemporaryDirectory(prefix="resnet-deploy-int8-") as tmp:
                made = meanwhile.result() if target is Target.TENSORRT and meanwhile is not None else None
                model = quantize_one(calibrated, target, path, Path(tmp), config.cpu, twin, made=made)
        else:
            with timer(f"search-{target}"):
                model = quantize_one(
                    calibrated, target, path, work / target.value, config.cpu, twin, config.accuracy_target, config.threads,
                    progress,
                )  # fmt: skip
            search = model.search
            result.searches.update({a.path.name: search for a in model.artifacts})
            progress.log(
                f"INT8 ({target}): {search.outcome.chosen.accuracy.top1_agreement * 100:.2f}% top-1 agreement on the "
                f"selection images with {len(search.excluded)} node(s) in higher precision: "
                + ("target met" if search.met else "TARGET MISSED (best effort)")
            )
        validated, *extra = model.artifacts
        result.made.append(validated)
        result.tensorrt_only += extra
        progress.log(
            f"INT8 ({target}): {validated.details['quantization']['quantized_nodes']} quantized nodes -> {model.path.name}"
        )
    return result


def _modelopt_session(config: BuildConfig):
    """The ModelOpt worker for the tensorrt-target INT8 model, started with the build: it imports ModelOpt (seconds)
    while the model is folded, exported and calibrated. None (nothing started) when no such model is made here."""
    wanted = Precision.INT8 in config.precisions and Target.TENSORRT in config.targets and config.accuracy_target is None
    return ModelOptSession() if wanted else nullcontext()


def int8_name(target: Target) -> str:
    return f"model.int8-{target.value}.onnx"


def build(config: BuildConfig, progress: Progress = Progress()) -> Report:
    baseline = read_report(config.baseline, "baseline") if config.baseline is not None else None  # bad input: fail first
    timer = StageTimer()
    check_engine_options(config)
    reduced = any(p is not Precision.FP32 for p in config.precisions)
    with timer("load"):
        model = load_model(config.arch, config.weights, config.num_classes, config.input_size, config.model_options)
        names = model.class_names  # folders named after them are labelled by name
        val = open_dataset(config.val_data, model.preprocess, option="--val-data", class_names=names)
        calib = None
        if config.calib_data:  # its labels are used only by an accuracy target's selection images
            calib = open_dataset(config.calib_data, model.preprocess, option="--calib-data", class_names=names)
        check_labels(val, model.num_classes, "--val-data")
        model = model.name_classes_after(val, "--val-data")
        check_images = first_images(calib or val, CHECK_IMAGES)
        images = None
        if reduced:  # with an accuracy target, the images that choose the nodes too: held out, never --val-data
            selection_options = config.selection if config.accuracy_target is not None else None
            images = prepare_calibration(
                calib, config.calibration, model.preprocess, names, selection_options, val, config.accuracy_target
            )
        calibration_set, selection = (images.calibration_set, images.selection) if images else (None, None)
    progress.log(f"loaded {model.arch} ({model.num_classes} classes, input {'x'.join(map(str, model.preprocess.input_size))})")
    for line in model.describe():
        progress.log(line)
    warnings = _warnings(val, calibration_set) + (images.warnings if images else [])
    if reduced and Precision.INT8 in config.precisions and Target.ONNXRUNTIME in config.targets:
        made_for = "onnxruntime-target INT8 model" + (f" (--cpu {config.cpu})" if config.cpu else "")
        mismatch = cpu_mismatch(None if config.cpu is None else config.cpu.value, host_isa(), f"the {made_for}")
        warnings += (
            [f"{mismatch}; its engines' numbers here are this CPU's, its exact accuracy is the model's"] if mismatch else []
        )

    with (
        staged_output_dir(config.out, config.force) as stage,
        tempfile.TemporaryDirectory(prefix="resnet-deploy-") as work,
        _modelopt_session(config) as modelopt,
    ):
        with timer("fold"):
            folded, fold = fold_and_verify(model, check_images)
            save_folded(folded, model, fold, stage / FOLDED_NAME)
        progress.log(f"folded {fold.folded} BatchNorm layers, {len(fold.remaining)} remain")
        with timer("export"):
            fp32 = export_onnx(folded, model.info, check_images, stage / FP32_NAME, config.opset, fold.as_dict())
        progress.log(f"exported ONNX opset {fp32.opset}, parity {fp32.details['parity']['max_abs_diff']:.2e}")

        artifacts = [fp32] if Precision.FP32 in config.precisions else []
        calibration, tensorrt_only, searches = None, [], {}
        if calibration_set is not None:
            reduced_models = _reduced_precision(config, fp32, images, stage, Path(work), timer, progress, modelopt=modelopt)
            artifacts += reduced_models.made
            calibration, tensorrt_only, searches = (
                reduced_models.calibration,
                reduced_models.tensorrt_only,
                reduced_models.searches,
            )
        specs = plan_engines(artifacts, config, tensorrt_only)
        with timer("engines"):
            results, maybe_runners, engine_notes = build_engines(specs, config, stage, progress)
        runnable = [(result, runner) for result, runner in zip(results, maybe_runners) if runner is not None]
        runners = [runner for _, runner in runnable]
        reference_runner = _reference_runner(model, config)
        exact = {
            a.path.name: exact_runner(a.path, a.precision, a.target, config.threads) for a in artifacts if a.precision != "fp32"
        }
        with timer("validate"):
            accuracies = validate_all(
                reference_runner, [*runners, *exact.values()], val, model.num_classes, config.batch_size, progress
            )
        accuracies, exact_accuracies = accuracies[: len(runners)], dict(zip(exact, accuracies[len(runners) :]))
        sample = first_images(val, max(config.benchmark.batch_sizes))
        with timer("benchmark"):
            reference_latency, *latencies = benchmark_all([reference_runner, *runners], sample, config.benchmark, progress)
        for (result, runner), accuracy, latency in zip(runnable, accuracies, latencies):
            result.accuracy, result.latency = accuracy, latency
            result.details = {**result.details, "runtime": runner.describe()}
        broken = _judge_against_exact(specs, results, exact_accuracies)
        if searches:
            with timer("latency-cost"):
                _mixed_precision_results(specs, results, maybe_runners, searches, config, sample, Path(work), progress)

        ref_top1 = next((r.accuracy.top1_ref for r in results if r.accuracy and r.accuracy.top1_ref is not None), None)
        ref_top5 = next((r.accuracy.top5_ref for r in results if r.accuracy and r.accuracy.top5_ref is not None), None)
        per_class = next((r.accuracy.per_class for r in results if r.accuracy and r.accuracy.per_class), None)
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
                **({} if per_class is None else {"per_class": per_class.reference()}),
            },
            engines=results,
            data={
                "val": _data_summary(val),
                **({"calib": _data_summary(calib)} if calib else {}),
                **({"selection": selection.describe()} if selection else {}),
            },
            environment=environment(config.threads),
            stages=timer.seconds,
            warnings=warnings,
            calibration=None if calibration is None else _calibration_summary(calibration, config.out.absolute() / CALIB_NAME),
            broken_models=broken,
            gated=config.gates is not None,
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
        write_report(report, stage)
    return report


def _reference_runner(model: LoadedModel, config: BuildConfig) -> Runner:
    """The registry's PyTorch reference (pytorch-fp32): the loaded module, from --weights, that every engine is
    compared with (its spec carries the module: the reference runs no file)."""
    return registry.reference_runner(model.module, config.weights, config.threads)


def _judge_against_exact(specs: list[PlannedEngine], results: list[EngineResult], exact: dict[str, Accuracy]) -> list[str]:
    """Give each engine of a reduced-precision model its model's exact accuracy and, where the engine loses markedly
    more, the kernel-loss line; return the lines for models below the sanity floor (kernels.py)."""
    host = host_isa()
    for spec, result in zip(specs, results):
        quantization = spec.artifact.details.get("quantization") or {}
        source = spec.artifact.path.name if spec.artifact.path.name in exact else quantization.get("same_qdq_as")
        result.reference_accuracy = exact.get(source)
        if result.accuracy is not None and result.reference_accuracy is not None:
            made_for = (quantization.get("cpu") or {}).get("kind")
            result.kernel_loss = kernel_loss(
                result.name, result.target, made_for, result.accuracy, result.reference_accuracy, host
            )
    return [line for name, accuracy in exact.items() if (line := broken_model(name, accuracy))]


def _mixed_precision_results(
    specs: list[PlannedEngine],
    results: list[EngineResult],
    runners: list[Runner | None],
    searches: dict[str, MixedPrecision],
    config: BuildConfig,
    images,
    work: Path,
    progress: Progress,
) -> None:
    """For each engine of a searched model: the target checked on --val-data, and the latency the nodes left in
    higher precision cost on that engine (the fully quantized model timed before, the chosen one after)."""
    options = config.benchmark
    for spec, result, runner in zip(specs, results, runners):
        search = searches.get(spec.artifact.path.name)
        if search is None:
            continue
        # checked on the number the search used: the model's exact accuracy where that is what it is judged by
        judged = result.reference_accuracy if judged_exactly(search.target_kind, config.cpu) else result.accuracy
        record = target_check(
            search, judged, result.name, runner, functools.partial(baseline_runner, spec.spec, search, work), images,
            options.batch_sizes, progress, record=result.quantization["mixed_precision"],
        )  # fmt: skip
        result.quantization = {**result.quantization, "mixed_precision": record}


def _calibration_summary(calibration: Calibration, path: Path) -> dict[str, object]:
    return {
        **calibration.summary(),
        "data": calibration.data,
        "tensors": len(calibration.ranges),
        "seconds": round(calibration.seconds, 3),
        "path": str(path),
    }
