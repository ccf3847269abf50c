"""`resnet-deploy build`: every stage in one run (pipeline/build.py), with the gates and a Triton repository."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .. import config
from ..calibration.methods import CalibrationOptions
from ..engines.openvino import OpenVINOOptions
from ..engines.ort import OrtOptions
from ..engines.trt import TensorRTOptions
from ..errors import UserError
from ..models import ModelOptions
from ..options import NUM_CLASSES, BenchmarkOptions, SelectionOptions, setting
from .options import (
    accuracy_target_options,
    calibration_flags,
    check_limits,
    common,
    engine_options,
    gate_options,
    model_options,
    parse_accuracy_target,
    parse_gates,
    settings_options,
)
from .tables import print_repository, print_summary, render_gates

EPILOG_BUILD = """\b
Example:
  resnet-deploy build --arch resnet18 --weights weights.pth --input-size 3x32x32 \\
      --calib-data data/calib --val-data data/val --precision fp32 --out out/
"""


@click.command(epilog=EPILOG_BUILD)
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="TOML file of these options (flags override).")
@settings_options(config.ARCH, config.WEIGHTS, config.VAL_DATA, config.CALIB_DATA, config.OUT, NUM_CLASSES, config.INPUT_SIZE)
@model_options
@settings_options(config.PRECISION, config.TARGET)
@calibration_flags
@settings_options(setting(CalibrationOptions.SETTINGS, "calib_cache"), *OrtOptions.SETTINGS, config.THREADS)
@engine_options
@settings_options(config.BATCH_SIZE, *BenchmarkOptions.SETTINGS, config.OPSET, config.REQUIRE_ENGINE, *TensorRTOptions.SETTINGS)
@click.option("--force", is_flag=True, help="Replace an existing --out folder (and --triton-repo).")
@click.option(
    "--triton-repo",
    type=click.Path(path_type=Path),
    help="Also export the build as a Triton model repository there (as `resnet-deploy triton OUT --repo DIR` does).",
)
@accuracy_target_options
@gate_options
@common
def build(
    progress, config_file: Path | None, junit: Path | None, summary: Path | None, triton_repo: Path | None, **options: Any
) -> int:
    """Run every stage: load, fold BN, export ONNX, build engines, validate against PyTorch, benchmark.

    With --gates (or --set), the report is gated like `resnet-deploy gate` does and a failing gate exits 1.
    """
    from ..pipeline.build import build as run_build

    ctx = click.get_current_context()
    config = _build_config(ctx, config_file, options)
    if (junit or summary) and config.gates is None:
        raise UserError("--junit and --summary report gate results; give --gates FILE (or --set) too")
    if triton_repo is not None:  # refused before the build spends its minutes
        from ..serving.repository import check_target, model_config_pb2

        model_config_pb2()
        check_target(triton_repo, config.force, "--triton-repo")
    report = run_build(config, progress)
    print_summary(report.as_dict())
    if triton_repo is not None:
        from ..serving.repository import write_repository

        print_repository(write_repository(config.out, triton_repo, force=config.force, option="--triton-repo"))
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    for failure in report.failures:
        click.echo(f"FAILED {failure}", err=True)
    if report.gates is not None:
        render_gates(report.gates.as_dict(), junit, summary)
    click.echo(f"report: {config.out / 'report.json'}, {config.out / 'report.md'}, {config.out / 'report.html'}")
    return report.return_code


def _build_config(ctx: click.Context, config_file: Path | None, options: dict[str, Any]):
    """The BuildConfig of the flags, a --config file's keys filling those not given on the command line."""
    if config_file is not None:
        from_file = config.load_toml_options(config_file)
        for key, value in from_file.items():
            if key not in options:
                raise UserError(f"config file {config_file}: key {key!r} has no `build` option yet; remove it")
            if ctx.get_parameter_source(key) in (click.core.ParameterSource.DEFAULT, None):
                options[key] = Path(value) if config.TOML_SETTINGS[key].kind is Path else value
    hub = options.get("weights") is not None and Path(options["weights"]).is_dir()  # config.json names the arch
    required = ("weights", "val_data", "out") if hub else ("arch", "weights", "val_data", "out")
    missing = [f"--{k.replace('_', '-')}" for k in required if not options.get(k)]
    if missing:
        raise UserError(f"missing {', '.join(missing)} (give them as options or in --config)")
    check_limits(options)
    return config.BuildConfig(
        arch=options.get("arch") or None,
        weights=Path(options["weights"]),
        val_data=Path(options["val_data"]),
        out=Path(options["out"]),
        calib_data=config.CALIB_DATA.read(options["calib_data"]),
        num_classes=options.get("num_classes"),
        input_size=config.INPUT_SIZE.read(options["input_size"]) if options.get("input_size") else None,
        precisions=config.PRECISION.read(options["precision"]),
        targets=config.TARGET.read(options["target"]),
        providers=OrtOptions.from_values(options).providers,
        engines=config.parse_engines(options.get("engines")),
        openvino=OpenVINOOptions.from_values(options),
        threads=options.get("threads"),
        batch_size=options["batch_size"],
        opset=options.get("opset"),
        tensorrt=TensorRTOptions.from_values(options),
        require_engine=options["require_engine"],
        benchmark=BenchmarkOptions.from_values(options),
        calibration=CalibrationOptions.from_values(options),
        force=options["force"],
        gates=parse_gates(options.get("gates"), options["overrides"], options.get("baseline")),
        baseline=config.BASELINE.read(options.get("baseline")),
        accuracy_target=parse_accuracy_target(options),
        selection=SelectionOptions.from_values(options),
        cpu=config.CPU.read(options["cpu"]),
        model_options=ModelOptions.from_values(options),
        engine_options=config.engine_options_of(options),
    )
