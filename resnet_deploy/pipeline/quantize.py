"""The one calibration and quantization entry point: `build`, `quantize` and `layers` all go through it.

1. `prepare_calibration`: the images. With an accuracy target (or for `layers`) the selection images that choose
   the nodes kept in higher precision, held out of --calib-data or drawn from --select-data and checked against
   the reporting data; then the calibration draw from the rest.
2. `calibrate_model`: the statistics of that draw on the FP32 model (from a matching cache, else one pass),
   written as calib.json: a `Calibrated` model, what every reduced-precision model is made from.
3. `quantize_one`: one INT8 model for one target, fully quantized or, with an accuracy target, the
   mixed-precision search's choice (calibration/search.py), written with its sidecar. `target_check` is the
   search's final check on --val-data and the latency its nodes in higher precision cost on one engine; a build
   runs it on each engine it built, `quantize` on ONNX Runtime here (`onnxruntime_check`), both with the engine
   registry's runners (`baseline_runner`: the fully quantized model on the same engine).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import OnnxArtifact, read_onnx
from ..calibration.calibrate import Calibration, CalibrationSet, SelectionSet, calibrate
from ..calibration.graph import excluded_nodes, load_onnx
from ..calibration.methods import CalibrationOptions
from ..calibration.quantize import Int8Recipe, ModelOptSession
from ..calibration.search import MixedPrecision, best_effort_path, mixed_precision_int8, target_on
from ..data import Dataset, Preprocess, first_images, open_dataset
from ..engines import registry
from ..engines.base import Runner
from ..engines.kind import EngineSettings, EngineSpec, ModelFile
from ..engines.ort import exact_runner
from ..errors import UserError
from ..isa import CpuKind
from ..options import AccuracyTarget, SelectionOptions, Target
from ..progress import Progress
from .benchmark import latency_cost
from .validate import Accuracy, ReferenceOutputs, validate


def read_fp32(path: Path, option: str = "--onnx") -> OnnxArtifact:
    """The FP32 ONNX model (with its sidecar) that `quantize` and `layers` start from."""
    read_onnx(path)  # refuses a non-ONNX file or unsafe external data before anything reads it
    fp32 = OnnxArtifact.read(path)
    if fp32.precision != "fp32":
        raise UserError(f"{option} {path} is a {fp32.precision} model; give the FP32 ONNX written by export or build")
    return fp32


def open_for(fp32: OnnxArtifact, path: Path, option: str) -> Dataset:
    """Images preprocessed as `fp32`'s sidecar records (as the model was trained), labelled by its class names."""
    return open_dataset(path, Preprocess.from_dict(fp32.preprocess), option=option, class_names=fp32.class_names)


def fixed_nodes(fp32: OnnxArtifact, options: CalibrationOptions) -> list[str]:
    """The nodes --exclude-layers keeps in higher precision in every model (a pattern matching none fails)."""
    return excluded_nodes(load_onnx(fp32.path), options.exclude_layers)


@dataclass(frozen=True)
class CalibrationImages:
    """The images of one calibration: those drawn for the statistics and, where nodes are chosen, the selection set."""

    calibration_set: CalibrationSet
    selection: SelectionSet | None

    @property
    def warnings(self) -> list[str]:
        warning = self.selection.warning() if self.selection is not None else None
        return [warning] if warning else []

    @cached_property
    def example(self) -> np.ndarray:
        """One calibration image (ModelOpt's API wants calibration data even with a cache)."""
        return first_images(self.calibration_set.dataset, 1)


def prepare_calibration(
    calib: Dataset,
    options: CalibrationOptions,
    preprocess: Preprocess,
    class_names: tuple[str, ...] | list[str] | None,
    selection: SelectionOptions | None = None,
    val: Dataset | None = None,
    target: AccuracyTarget | None = None,
) -> CalibrationImages:
    """Split off the selection images (with `selection`; checked against `val` and `target`), then draw the
    calibration images from the rest; `preprocess` and `class_names` open --select-data."""
    pool, selection_set = calib, None
    if selection is not None:  # the images that choose the nodes: held out, never the reporting data
        pool, selection_set = SelectionSet.split(calib, selection, options.seed, preprocess, class_names)
        selection_set.check(val, target)
    return CalibrationImages(CalibrationSet.draw(pool, options.size, options.seed), selection_set)


@dataclass(frozen=True, eq=False)
class Calibrated:
    """An FP32 model with its calibration: what every reduced-precision model of it is made from."""

    fp32: OnnxArtifact
    calibration: Calibration
    images: CalibrationImages
    fixed: tuple[str, ...]  # --exclude-layers nodes

    def recipe(self, target: Target, cpu: CpuKind | None = None) -> Int8Recipe:
        return Int8Recipe(self.fp32, self.calibration, target, self.images.example, cpu)


def calibrate_model(
    fp32: OnnxArtifact,
    images: CalibrationImages,
    options: CalibrationOptions,
    fixed: list[str],
    write_to: Path,
    threads: int | None = None,
    progress: Progress = Progress(),
) -> Calibrated:
    """Statistics of the drawn images on `fp32` (from `options.cache` when it matches, else one pass), written to
    `write_to` unless they were just read from there."""
    calibration = calibrate(fp32, images.calibration_set, options, threads, progress)
    if not (calibration.reused and options.cache is not None and Path(write_to) == Path(options.cache)):
        calibration.write(write_to)
    return Calibrated(fp32, calibration, images, tuple(fixed))


@dataclass(frozen=True)
class Int8Model:
    """One written INT8 model: its artifacts (the validated model, then its FP16-elsewhere twin for TensorRT, if
    any), where it was written (a best-effort name when the target was missed) and the search that chose it."""

    artifacts: list[OnnxArtifact]
    path: Path
    search: MixedPrecision | None = None


def fp16_twin_path(path: Path) -> Path:
    """model.int8-tensorrt.onnx -> model.int8-tensorrt.fp16.onnx: the same Q/DQ with FP16 elsewhere."""
    return path.with_name(f"{path.stem}.fp16{path.suffix}")


def quantize_one(
    calibrated: Calibrated,
    target: Target,
    path: Path,
    work: Path,
    cpu: CpuKind | None = None,
    fp16_twin: bool = False,
    accuracy_target: AccuracyTarget | None = None,
    threads: int | None = None,
    progress: Progress = Progress(),
    session: ModelOptSession | None = None,
    made: dict[str, Path] | None = None,
    check: Callable[[MixedPrecision], dict[str, Any]] | None = None,
) -> Int8Model:
    """The INT8 model of `calibrated` for `target` at `path` (+ its FP16-elsewhere twin with `fp16_twin`), its
    scratch files under `work`. Without `accuracy_target`: fully quantized (`made`: files made meanwhile, e.g. in the
    ModelOpt worker); with it: the search's choice on the selection images, its record (`check`'s, when given:
    `target_check`) in the sidecar's `mixed_precision`."""
    recipe, fixed = calibrated.recipe(target, cpu), list(calibrated.fixed)
    if accuracy_target is None:
        files = made if made is not None else recipe.make(fixed, work, fp16_twin, session)
        return Int8Model(recipe.write(files, path, fixed, fp16_twin_path(path) if fp16_twin else None), path)
    selection = calibrated.images.selection
    search = mixed_precision_int8(recipe, accuracy_target, selection, work, fixed, threads, progress, fp16_twin)
    path = path if search.met else best_effort_path(path)
    details = {"mixed_precision": search.as_dict() if check is None else check(search)}
    excluded = [*fixed, *search.excluded]
    artifacts = recipe.write(search.chosen_files, path, excluded, fp16_twin_path(path) if fp16_twin else None, details)
    return Int8Model(artifacts, path, search)


def target_check(
    search: MixedPrecision,
    judged: Accuracy | None,
    engine: str,
    after: Runner | None,
    before: Callable[[], Runner],
    images: np.ndarray,
    batch_sizes: tuple[int, ...],
    progress: Progress = Progress(),
    record: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The search's record (`record`, default its own) with the target checked on --val-data (`judged`: the accuracy
    the model is judged by there) and, when nodes were left out and `after` runs the chosen model, the latency they
    cost on that engine against `before()`, the fully quantized model on the same kind of engine."""
    record = {**(search.as_dict() if record is None else record), "on_val": target_on(search.target, judged, "--val-data")}
    if after is not None and search.excluded:
        rows = latency_cost(before(), after, images, batch_sizes, progress=progress)
        record["latency_cost"] = [{"engine": engine, **row} for row in rows]
    return record


def baseline_runner(spec: EngineSpec, search: MixedPrecision, work: Path | None = None) -> Runner:
    """A runner of the fully quantized model on the same kind of engine as `spec` (before the search): the same
    engine settings on the fully quantized ONNX, or, for a kind that compiles a file, a file compiled from its twin
    in `work`."""
    if not registry.kind(spec.kind).builds:  # ONNX Runtime, OpenVINO
        path = search.baseline_files["fp32"]
        return registry.runner(replace(spec, model=replace(spec.model, path=path), file=path))
    if work is None:
        raise RuntimeError(f"engine {spec.name}: the fully quantized model's engine needs a folder to be built in")
    twin = search.baseline_twin(work / "baseline-twin")  # FP16 elsewhere, as the engine that was built
    baseline = replace(
        spec, model=replace(spec.model, path=twin), file=work / f"baseline{spec.file.suffix}", name=f"{spec.name}-all-int8"
    )
    registry.kind(spec.kind).build(baseline, work)
    return registry.runner(baseline)


def onnxruntime_check(
    fp32: OnnxArtifact, val: Dataset, threads: int | None = None, progress: Progress = Progress()
) -> Callable[[MixedPrecision], dict[str, Any]]:
    """`target_check` as `quantize` runs it, on the registry's ONNX Runtime engine here (CPU): the accuracy on `val`
    as the search measured it (the exact runner where that is what the model is judged by, as a build's check),
    the latency cost at batch 1."""
    settings = EngineSettings(("onnxruntime",), threads=threads)

    def check(search: MixedPrecision) -> dict[str, Any]:
        (reference_spec,) = registry.plan(fp32, settings)
        with registry.runner(reference_spec) as runner:
            reference = ReferenceOutputs.compute(runner, val, fp32.num_classes, progress=progress)
        target, chosen = search.target_kind.value, search.chosen_files["fp32"]
        (spec,) = registry.plan(ModelFile(chosen, "int8", target), settings)
        judging = exact_runner(chosen, "int8", target, threads) if search.measured_exactly else registry.runner(spec)
        with reference, judging as runner:
            judged = validate(runner, val, reference, progress=progress)
        twin = search.target_kind is Target.TENSORRT
        return target_check(
            search, judged, f"onnxruntime (cpu){' running the tensorrt-target model' if twin else ''}",
            registry.runner(spec), lambda: baseline_runner(spec, search), first_images(val, 1), (1,), progress,
        )  # fmt: skip

    return check
