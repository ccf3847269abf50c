"""`quantize` and `layers`: one reduced-precision model, or the per-layer INT8 sensitivity (pipeline/quantize.py)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import click

from .. import config
from ..calibration.methods import CalibrationOptions
from ..errors import UserError
from ..options import setting
from .inputs import refuse_existing
from .options import (
    accuracy_target_options,
    calibration_flags,
    check_limits,
    common,
    parse_accuracy_target,
    selection_options,
    settings_options,
)
from .tables import print_layers, print_search

TARGET = config.TARGET.but(help="INT8 recipe: onnxruntime or tensorrt.")  # one recipe per run
CALIB_CACHE = setting(CalibrationOptions.SETTINGS, "calib_cache")


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
@settings_options(config.PRECISION.but(default="int8", help="int8 or fp16."), TARGET)
@calibration_flags
@settings_options(
    CALIB_CACHE.but(help="Statistics cache: reused when it matches, written when not (default: calib.json beside --out).")
)
@click.option(
    "--val-data",
    type=click.Path(path_type=Path),
    help="Validation data: reports the accuracy target's final check (needed with one); else only to warn about overlap.",
)
@settings_options(config.THREADS.but(help="CPU threads for the calibration pass."))
@click.option("--force", is_flag=True, help="Replace an existing --out file.")
@accuracy_target_options
@common
def quantize(progress, onnx_path: Path, calib_data: Path, out: Path, val_data: Path | None, **options: Any) -> int:
    """FP32 ONNX + calibration images -> INT8 Q/DQ ONNX (per target) or FP16 ONNX, with calib.json.

    With --max-top1-drop / --min-top1-agreement, INT8 leaves the most sensitive nodes in higher precision until
    the target holds on the selection images, then checks it on --val-data; exit 1 when it cannot be met (the
    best model found is written as <out>.best-effort.onnx).
    """
    from ..calibration.calibrate import CALIB_NAME
    from ..data import Preprocess
    from ..isa import parse_cpu
    from ..options import Precision, SelectionOptions, Target, parse_enum_list
    from ..pipeline.quantize import calibrate_model, fixed_nodes, open_for, prepare_calibration, read_fp32

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
    fp32 = read_fp32(onnx_path)
    calibration_options = CalibrationOptions.from_values(
        {**options, "calib_cache": options["calib_cache"] or out.parent / CALIB_NAME}
    )
    fixed = fixed_nodes(fp32, calibration_options)  # fail before calibrating
    calib = open_for(fp32, calib_data, "--calib-data")
    val = open_for(fp32, val_data, "--val-data") if val_data is not None else None
    selection = SelectionOptions.from_values(options) if accuracy_target is not None else None
    preprocess = Preprocess.from_dict(fp32.preprocess)
    images = prepare_calibration(calib, calibration_options, preprocess, fp32.class_names, selection, val, accuracy_target)
    for warning in images.warnings:
        click.echo(f"warning: {warning}", err=True)
    if val is not None:
        shared = images.calibration_set.overlap(val)
        if shared:
            click.echo(f"warning: {shared} calibration images are also in --val-data {val_data}", err=True)
    cache, threads = calibration_options.cache, options["threads"]
    calibrated = calibrate_model(fp32, images, calibration_options, fixed, cache, threads, progress)
    calibration, code = calibrated.calibration, 0
    if precision is Precision.FP16:
        from ..calibration.fp16 import convert_fp16

        artifact = convert_fp16(fp32, calibration, out, calibration_options.exclude_layers)
        info = artifact.details["fp16"]
        click.echo(f"fp16: {info['fp16_nodes']} nodes in FP16, {len(info['fp32_nodes'])} kept in FP32 -> {out}")
    elif accuracy_target is None:
        from ..pipeline.quantize import quantize_one

        with tempfile.TemporaryDirectory(prefix="resnet-deploy-int8-") as tmp:
            (artifact,) = quantize_one(calibrated, target, out, Path(tmp), cpu).artifacts
        info = artifact.details["quantization"]
        click.echo(
            f"int8 ({target}): {info['quantized_nodes']} quantized nodes, {len(info['excluded_nodes'])} excluded, "
            f"{calibration.method} ranges from {calibration.samples} images -> {out}"
        )
    else:
        code = _quantize_to_target(calibrated, target, accuracy_target, val, out, options["threads"], progress, cpu)
    reuse = "reused from" if calibration.reused else "written to"
    click.echo(f"calibration statistics {reuse} {calibration_options.cache}")
    return code


def _quantize_to_target(calibrated, target, accuracy_target, val, out: Path, threads, progress, cpu) -> int:
    """`quantize` with an accuracy target: the search, the final check on --val-data, the latency cost on ONNX
    Runtime here (pipeline.quantize.onnxruntime_check); the exit code comes from the same rule as a build's
    (report.target_failure)."""
    from ..options import Target
    from ..pipeline.quantize import onnxruntime_check, quantize_one
    from ..reports.report import target_failure

    twin = target is Target.TENSORRT  # for TensorRT: FP16 between the quantized layers and in the nodes left out
    check = onnxruntime_check(calibrated.fp32, val, threads, progress)
    with tempfile.TemporaryDirectory(prefix="resnet-deploy-search-") as work:
        model = quantize_one(calibrated, target, out, Path(work), cpu, twin, accuracy_target, threads, progress, check=check)
    artifact, *twins = model.artifacts
    info = artifact.details["quantization"]
    print_search(info["mixed_precision"])
    click.echo(
        f"int8 ({target}): {len(model.search.excluded)} node(s) left in higher precision, "
        f"{info['quantized_nodes']} quantized -> {model.path}"
        + (f" (+ {twins[0].path.name}: FP16 elsewhere, for TensorRT)" if twins else "")
    )
    failure = target_failure(f"int8 ({target})", str(model.path), info)
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
@settings_options(TARGET)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder for layers.json, layers.html, calib.json.")
@calibration_flags
@settings_options(CALIB_CACHE.but(help="Statistics cache (default: OUT/calib.json)."))
@settings_options(config.THREADS.but(help="CPU threads for ONNX Runtime."))
@click.option("--force", is_flag=True, help="Replace existing files in --out.")
@selection_options
@common
def layers(progress, onnx_path: Path, calib_data: Path, out: Path, **options: Any) -> int:
    """Per-layer INT8 sensitivity: the SQNR each quantized node adds, and the top-1 agreement quantizing it costs."""
    from ..calibration.calibrate import CALIB_NAME
    from ..calibration.sensitivity import measure_layers
    from ..data import Preprocess
    from ..files import write_json_atomic, write_text_atomic
    from ..isa import parse_cpu
    from ..options import SelectionOptions, Target, parse_enum_list
    from ..pipeline.quantize import calibrate_model, fixed_nodes, open_for, prepare_calibration, read_fp32
    from ..reports.html import render_layers_html

    targets = parse_enum_list(Target, options["target"], "--target")
    if len(targets) > 1:
        raise UserError("layers measures one INT8 recipe: give one --target")
    check_limits(options)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    if (out / "layers.json").exists() and not options["force"]:
        raise UserError(f"{out / 'layers.json'} already exists; pass --force to replace it, or choose another --out")
    fp32 = read_fp32(onnx_path)
    calibration_options = CalibrationOptions.from_values({**options, "calib_cache": options["calib_cache"] or out / CALIB_NAME})
    fixed = fixed_nodes(fp32, calibration_options)
    calib = open_for(fp32, calib_data, "--calib-data")
    preprocess = Preprocess.from_dict(fp32.preprocess)
    images = prepare_calibration(calib, calibration_options, preprocess, fp32.class_names, SelectionOptions.from_values(options))
    for warning in images.warnings:
        click.echo(f"warning: {warning}", err=True)
    calibrated = calibrate_model(
        fp32, images, calibration_options, fixed, calibration_options.cache, options["threads"], progress
    )
    selection = images.selection
    measured = measure_layers(
        fp32, calibrated.calibration, targets[0], selection.dataset, selection.describe(), images.example, fixed,
        options["threads"], progress, cpu=parse_cpu(options["cpu"]),
    )  # fmt: skip
    data = measured.as_dict()
    write_json_atomic(out / "layers.json", data)
    write_text_atomic(out / "layers.html", render_layers_html(data))
    print_layers(data)
    click.echo(f"layers: {out / 'layers.json'}, {out / 'layers.html'}")
    return 0
