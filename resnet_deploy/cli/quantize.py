"""`quantize` and `layers`: one reduced-precision model, or the per-layer INT8 sensitivity (pipeline/quantize.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..errors import UserError
from .inputs import refuse_existing
from .options import (
    accuracy_target_options,
    calibration_flags,
    check_limits,
    common,
    parse_accuracy_target,
    parse_calibration,
    parse_selection,
    selection_options,
)
from .tables import print_layers, print_search


@click.command(
    epilog="\b\nExamples:\n"
    "  resnet-deploy quantize --onnx out/model.fp32.onnx --calib-data calib/ --out model.int8.onnx\n"
    "  resnet-deploy quantize --onnx out/model.fp32.onnx --calib-data calib/ --target tensorrt --out model.int8-trt.onnx\n"
    "  resnet-deploy quantize --onnx out/model.fp32.onnx --calib-data calib/ --precision fp16 --out model.fp16.onnx\n"
    "  resnet-deploy quantize --onnx out/model.fp32.onnx --calib-data calib/ --val-data val/ --min-top1-agreement 0.99 \\\n"
    "      --out model.int8.onnx"
)
@click.option("--onnx", "onnx_path", required=True, type=click.Path(path_type=Path), help="FP32 ONNX from `export` or `build`.")
@click.option("--calib-data", required=True, type=click.Path(path_type=Path), help="Calibration images or .npz.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="ONNX file to write (+ .json sidecar).")
@click.option("--precision", default="int8", show_default=True, help="int8 or fp16.")
@click.option("--target", default="onnxruntime", show_default=True, help="INT8 recipe: onnxruntime or tensorrt.")
@calibration_flags
@click.option(
    "--calib-cache",
    type=click.Path(path_type=Path),
    help="Statistics cache: reused when it matches, written when not (default: calib.json beside --out).",
)
@click.option(
    "--val-data",
    type=click.Path(path_type=Path),
    help="Validation data: reports the accuracy target's final check (needed with one); else only to warn about overlap.",
)
@click.option("--threads", type=int, help="CPU threads for the calibration pass.")
@click.option("--force", is_flag=True, help="Replace an existing --out file.")
@accuracy_target_options
@common
def quantize(progress, onnx_path: Path, calib_data: Path, out: Path, val_data: Path | None, **options: Any) -> int:
    """FP32 ONNX + calibration images -> INT8 Q/DQ ONNX (per target) or FP16 ONNX, with calib.json.

    With --max-top1-drop / --min-top1-agreement, INT8 leaves the most sensitive nodes in higher precision until
    the target holds on the selection images, then checks it on --val-data; exit 1 when it cannot be met (the
    best model found is written as <out>.best-effort.onnx).
    """
    from ..artifacts import OnnxArtifact, read_onnx
    from ..calibration.calibrate import CALIB_NAME, CalibrationSet, SelectionSet, calibrate
    from ..calibration.graph import excluded_nodes, load_onnx
    from ..config import Precision, Target, parse_enum_list
    from ..data import Preprocess, first_images, open_dataset
    from ..isa import parse_cpu

    cpu = parse_cpu(options["cpu"])
    precisions = parse_enum_list(Precision, options["precision"], "--precision")
    targets = parse_enum_list(Target, options["target"], "--target")
    if len(precisions) > 1 or len(targets) > 1:
        raise UserError("quantize writes one model: give one --precision and one --target (build makes several)")
    precision, target = precisions[0], targets[0]
    if precision is Precision.FP32:
        raise UserError("--precision fp32: the input already is FP32; choose int8 or fp16")
    check_limits(options)
    accuracy_target = parse_accuracy_target(options)
    if accuracy_target is not None and precision is not Precision.INT8:
        raise UserError(
            "--max-top1-drop / --min-top1-agreement choose which INT8 nodes stay in higher precision; use --precision int8"
        )
    if accuracy_target is not None and val_data is None:
        raise UserError(
            "an accuracy target needs --val-data: the images that report the final accuracy (the nodes are chosen on "
            "other images, held out of --calib-data or --select-data)"
        )
    refuse_existing(out, options["force"])
    read_onnx(onnx_path)  # refuses a non-ONNX file or unsafe external data before anything reads it
    fp32 = OnnxArtifact.read(onnx_path)
    if fp32.precision != "fp32":
        raise UserError(f"--onnx {onnx_path} is a {fp32.precision} model; give the FP32 ONNX written by export or build")
    calibration_options = parse_calibration({**options, "calib_cache": options["calib_cache"] or out.parent / CALIB_NAME})
    fixed = excluded_nodes(load_onnx(fp32.path), calibration_options.exclude_layers)  # fail before calibrating
    preprocess, names = Preprocess.from_dict(fp32.preprocess), fp32.class_names  # the sidecar's: as the model was trained
    calib = open_dataset(calib_data, preprocess, option="--calib-data", class_names=names)
    val = open_dataset(val_data, preprocess, option="--val-data", class_names=names) if val_data is not None else None
    selection = None
    if accuracy_target is not None:
        calib, selection = SelectionSet.split(calib, parse_selection(options), calibration_options.seed, preprocess, names)
        selection.check(val, accuracy_target)
        if selection.warning():
            click.echo(f"warning: {selection.warning()}", err=True)
    calibration_set = CalibrationSet.draw(calib, calibration_options.size, calibration_options.seed)
    if val is not None:
        shared = calibration_set.overlap(val)
        if shared:
            click.echo(f"warning: {shared} calibration images are also in --val-data {val_data}", err=True)
    calibration = calibrate(fp32, calibration_set, calibration_options, options["threads"], progress)
    if not calibration.reused:
        calibration.write(calibration_options.cache)
    code = 0
    if precision is Precision.FP16:
        from ..calibration.fp16 import convert_fp16

        artifact = convert_fp16(fp32, calibration, out, calibration_options.exclude_layers)
        info = artifact.details["fp16"]
        click.echo(f"fp16: {info['fp16_nodes']} nodes in FP16, {len(info['fp32_nodes'])} kept in FP32 -> {out}")
    elif accuracy_target is None:
        from ..calibration.quantize import quantize_int8

        example = first_images(calibration_set.dataset, 1)
        (artifact,) = quantize_int8(fp32, calibration, target, out, example, calibration_options.exclude_layers, cpu=cpu)
        info = artifact.details["quantization"]
        click.echo(
            f"int8 ({target}): {info['quantized_nodes']} quantized nodes, {len(info['excluded_nodes'])} excluded, "
            f"{calibration.method} ranges from {calibration.samples} images -> {out}"
        )
    else:
        code = _quantize_to_target(
            fp32, calibration, target, accuracy_target, selection, val, calibration_set, fixed, out, options["threads"], progress,
            cpu,
        )  # fmt: skip
    reuse = "reused from" if calibration.reused else "written to"
    click.echo(f"calibration statistics {reuse} {calibration_options.cache}")
    return code


def _quantize_to_target(
    fp32, calibration, target, accuracy_target, selection, val, calibration_set, fixed, out, threads, progress, cpu
):
    """`quantize` with an accuracy target: the search, the final check on --val-data, the latency cost on ONNX
    Runtime here; the exit code comes from the same rule as a build's (report.target_failure)."""
    import tempfile

    from ..calibration.quantize import judged_exactly, write_int8
    from ..calibration.search import best_effort_path, mixed_precision_int8, target_on
    from ..config import Target
    from ..data import first_images
    from ..engines.ort import OrtRunner
    from ..pipeline.benchmark import latency_cost
    from ..pipeline.report import target_failure
    from ..pipeline.validate import ReferenceOutputs, validate

    example = first_images(calibration_set.dataset, 1)
    twin = target is Target.TENSORRT  # for TensorRT: FP16 between the quantized layers and in the nodes left out
    with tempfile.TemporaryDirectory(prefix="resnet-deploy-search-") as work:
        search = mixed_precision_int8(
            fp32, calibration, target, accuracy_target, selection.dataset, selection.describe(), example, Path(work),
            fixed, threads, progress, fp16_twin=twin, cpu=cpu,
        )  # fmt: skip
        path = out if search.met else best_effort_path(out)
        excluded, files = [*fixed, *search.excluded], search.chosen_files
        with OrtRunner(fp32.path, "fp32", "fp32", threads=threads) as runner:
            reference = ReferenceOutputs.compute(runner, val, fp32.num_classes, progress=progress)
        exact = judged_exactly(target, cpu)  # the number the model is judged by: as the search measured it
        with reference, OrtRunner(files["fp32"], "int8", "int8", target.value, threads=threads, exact=exact) as runner:
            on_val = target_on(accuracy_target, validate(runner, val, reference, progress=progress), "--val-data")
        cost = []
        if search.excluded:
            before = OrtRunner(search.baseline_files["fp32"], "all-int8", "int8", target.value, threads=threads)
            after = OrtRunner(files["fp32"], "int8", "int8", target.value, threads=threads)
            engine = f"onnxruntime (cpu){' running the tensorrt-target model' if twin else ''}"
            cost = [
                {"engine": engine, **row} for row in latency_cost(before, after, first_images(val, 1), (1,), progress=progress)
            ]
        details = {"mixed_precision": {**search.as_dict(), "on_val": on_val, "latency_cost": cost}}
        fp16_path = path.with_name(f"{path.stem}.fp16{path.suffix}") if twin else None
        artifact, *_ = write_int8(fp32, calibration, target, files, path, excluded, fp16_path, details, cpu)
    print_search(details["mixed_precision"])
    click.echo(
        f"int8 ({target}): {len(search.excluded)} node(s) left in higher precision, "
        f"{artifact.details['quantization']['quantized_nodes']} quantized -> {path}"
        + (f" (+ {fp16_path.name}: FP16 elsewhere, for TensorRT)" if fp16_path else "")
    )
    failure = target_failure(f"int8 ({target})", str(path), artifact.details["quantization"])
    if failure:
        click.echo(f"FAILED {failure}", err=True)
    return 1 if failure else 0


EPILOG_LAYERS = """\b
Example:
  resnet-deploy layers --onnx out/model.fp32.onnx --calib-data calib/ --target tensorrt --out layers/
\b
Writes DIR/layers.json (every quantized node, most sensitive first), DIR/layers.html (the same with a bar
chart) and DIR/calib.json. The sensitivity is measured on --select-data, or on images held out of
--calib-data (calibration draws from the rest). Each node is quantized again without it: one quantization
and one pass over the selection images per node.
"""


@click.command(epilog=EPILOG_LAYERS)
@click.option("--onnx", "onnx_path", required=True, type=click.Path(path_type=Path), help="FP32 ONNX from `export` or `build`.")
@click.option("--calib-data", required=True, type=click.Path(path_type=Path), help="Calibration images or .npz.")
@click.option("--target", default="onnxruntime", show_default=True, help="INT8 recipe: onnxruntime or tensorrt.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder for layers.json, layers.html, calib.json.")
@calibration_flags
@click.option("--calib-cache", type=click.Path(path_type=Path), help="Statistics cache (default: OUT/calib.json).")
@click.option("--threads", type=int, help="CPU threads for ONNX Runtime.")
@click.option("--force", is_flag=True, help="Replace existing files in --out.")
@selection_options
@common
def layers(progress, onnx_path: Path, calib_data: Path, out: Path, **options: Any) -> int:
    """Per-layer INT8 sensitivity: the SQNR each quantized node adds, and the top-1 agreement quantizing it costs."""
    from ..artifacts import OnnxArtifact, read_onnx, write_json_atomic, write_text_atomic
    from ..calibration.calibrate import CALIB_NAME, CalibrationSet, SelectionSet, calibrate
    from ..calibration.graph import excluded_nodes, load_onnx
    from ..calibration.sensitivity import measure_layers
    from ..config import Target, parse_enum_list
    from ..data import Preprocess, first_images, open_dataset
    from ..isa import parse_cpu
    from ..pipeline.html import render_layers_html

    targets = parse_enum_list(Target, options["target"], "--target")
    if len(targets) > 1:
        raise UserError("layers measures one INT8 recipe: give one --target")
    check_limits(options)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    if (out / "layers.json").exists() and not options["force"]:
        raise UserError(f"{out / 'layers.json'} already exists; pass --force to replace it, or choose another --out")
    read_onnx(onnx_path)  # refuses a non-ONNX file or unsafe external data before anything reads it
    fp32 = OnnxArtifact.read(onnx_path)
    if fp32.precision != "fp32":
        raise UserError(f"--onnx {onnx_path} is a {fp32.precision} model; give the FP32 ONNX written by export or build")
    calibration_options = parse_calibration({**options, "calib_cache": options["calib_cache"] or out / CALIB_NAME})
    fixed = excluded_nodes(load_onnx(fp32.path), calibration_options.exclude_layers)
    preprocess, names = Preprocess.from_dict(fp32.preprocess), fp32.class_names
    calib = open_dataset(calib_data, preprocess, option="--calib-data", class_names=names)
    pool, selection = SelectionSet.split(calib, parse_selection(options), calibration_options.seed, preprocess, names)
    if selection.warning():
        click.echo(f"warning: {selection.warning()}", err=True)
    calibration_set = CalibrationSet.draw(pool, calibration_options.size, calibration_options.seed)
    calibration = calibrate(fp32, calibration_set, calibration_options, options["threads"], progress)
    if not calibration.reused:
        calibration.write(calibration_options.cache)
    example = first_images(calibration_set.dataset, 1)
    measured = measure_layers(
        fp32, calibration, targets[0], selection.dataset, selection.describe(), example, fixed, options["threads"], progress,
        cpu=parse_cpu(options["cpu"]),
    )  # fmt: skip
    data = measured.as_dict()
    write_json_atomic(out / "layers.json", data)
    write_text_atomic(out / "layers.html", render_layers_html(data))
    print_layers(data)
    click.echo(f"layers: {out / 'layers.json'}, {out / 'layers.html'}")
    return 0
