"""`resnet-deploy build`: every stage in one run (pipeline/build.py), with the gates and a Triton repository."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..errors import UserError
from .options import (
    WEIGHTS_HELP,
    accuracy_target_options,
    calibration_flags,
    check_limits,
    common,
    engine_options,
    gate_options,
    model_options,
    parse_accuracy_target,
    parse_calibration,
    parse_gates,
    parse_model_options,
    parse_openvino,
    parse_selection,
)
from .tables import print_repository, print_summary, render_gates

EPILOG_BUILD = """\b
Example:
  resnet-deploy build --arch resnet18 --weights weights.pth --input-size 3x32x32 \\
      --calib-data data/calib --val-data data/val --precision fp32 --out out/
"""


@click.command(epilog=EPILOG_BUILD)
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="TOML file of these options (flags override).")
@click.option("--arch", help="ResNet-family architecture (timm or torchvision name, e.g. resnet50; a hub folder names its own).")
@click.option("--weights", type=click.Path(path_type=Path), help=WEIGHTS_HELP)
@click.option("--val-data", type=click.Path(path_type=Path), help="Validation images (ImageFolder or flat) or .npz.")
@click.option("--calib-data", type=click.Path(path_type=Path), help="Calibration images or .npz (INT8; also used for checks).")
@click.option("--out", type=click.Path(path_type=Path), help="Output folder.")
@click.option("--num-classes", type=int, help="Classifier outputs (default: from the weights).")
@click.option("--input-size", help="CxHxW, e.g. 3x224x224 (default: the arch's).")
@model_options
@click.option("--precision", default="fp32", show_default=True, help="Comma-separated: fp32, fp16, int8.")
@click.option(
    "--target",
    default="onnxruntime",
    show_default=True,
    help="Who consumes the models, comma-separated: onnxruntime, tensorrt (INT8 recipe per target; tensorrt adds engines).",
)
@calibration_flags
@click.option("--calib-cache", type=click.Path(path_type=Path), help="calib.json of an earlier run: reused when nothing changed.")
@click.option("--providers", default="cpu", show_default=True, help="ONNX Runtime execution providers: cpu, cuda, tensorrt.")
@click.option("--threads", type=int, help="CPU threads for PyTorch, ONNX Runtime and OpenVINO (default: all cores).")
@engine_options
@click.option("--batch-size", type=int, default=32, show_default=True, help="Batch size for validation.")
@click.option("--batch-sizes", default="1,8", show_default=True, help="Batch sizes to benchmark.")
@click.option("--warmup", type=int, default=10, show_default=True, help="Warm-up calls per batch size.")
@click.option("--iterations", type=int, default=50, show_default=True, help="Timed calls per batch size.")
@click.option("--opset", type=int, help="ONNX opset (default: the exporter's).")
@click.option("--require-engine", is_flag=True, help="Fail (exit 2) instead of skipping TensorRT engines without TensorRT/GPU.")
@click.option("--workspace-mib", type=int, help="TensorRT: builder workspace limit in MiB (default: TensorRT's).")
@click.option("--builder-optimization-level", type=int, help="TensorRT: 0..5 (default 3; higher builds longer).")
@click.option("--timing-cache", type=click.Path(path_type=Path), help="TensorRT: timing cache file, read and updated.")
@click.option("--version-compatible", is_flag=True, help="TensorRT: engines also run on later TensorRT versions.")
@click.option("--hardware-compat", default="none", show_default=True, help="TensorRT: none, ampere+ or same-cc.")
@click.option("--tf32", is_flag=True, help="TensorRT: let FP32 layers use TF32 tensor cores.")
@click.option("--opt-batch-size", type=int, help="TensorRT: batch size to tune for (default: median of --batch-sizes).")
@click.option("--cuda-graph", is_flag=True, help="TensorRT: run batch 1 from a captured CUDA graph.")
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
    from ..config import (
        PATH_KEYS,
        BenchmarkOptions,
        BuildConfig,
        Precision,
        Target,
        TensorRTOptions,
        load_toml_options,
        parse_engines,
        parse_enum_list,
        parse_hardware_compat,
        parse_input_size,
        parse_int_list,
    )
    from ..engines.ort import parse_providers
    from ..isa import parse_cpu

    if config_file is not None:
        from_file = load_toml_options(config_file)
        for key, value in from_file.items():
            if key not in options:
                raise UserError(f"config file {config_file}: key {key!r} has no `build` option yet; remove it")
            if ctx.get_parameter_source(key) in (click.core.ParameterSource.DEFAULT, None):
                options[key] = Path(value) if key in PATH_KEYS else value
    hub = options.get("weights") is not None and Path(options["weights"]).is_dir()  # config.json names the arch
    required = ("weights", "val_data", "out") if hub else ("arch", "weights", "val_data", "out")
    missing = [f"--{k.replace('_', '-')}" for k in required if not options.get(k)]
    if missing:
        raise UserError(f"missing {', '.join(missing)} (give them as options or in --config)")
    check_limits(options)
    return BuildConfig(
        arch=options.get("arch") or None,
        weights=Path(options["weights"]),
        val_data=Path(options["val_data"]),
        out=Path(options["out"]),
        calib_data=Path(options["calib_data"]) if options.get("calib_data") else None,
        num_classes=options.get("num_classes"),
        input_size=parse_input_size(options["input_size"]) if options.get("input_size") else None,
        precisions=parse_enum_list(Precision, options["precision"], "--precision"),
        targets=parse_enum_list(Target, options["target"], "--target"),
        providers=parse_providers(options["providers"]),
        engines=parse_engines(options.get("engines")),
        openvino=parse_openvino(options),
        threads=options.get("threads"),
        batch_size=options["batch_size"],
        opset=options.get("opset"),
        tensorrt=TensorRTOptions(
            workspace_mib=options.get("workspace_mib"),
            builder_optimization_level=options.get("builder_optimization_level"),
            timing_cache=Path(options["timing_cache"]) if options.get("timing_cache") else None,
            version_compatible=options["version_compatible"],
            hardware_compat=parse_hardware_compat(options["hardware_compat"]),
            tf32=options["tf32"],
            opt_batch_size=options.get("opt_batch_size"),
            cuda_graph=options["cuda_graph"],
        ),
        require_engine=options["require_engine"],
        benchmark=BenchmarkOptions(
            batch_sizes=parse_int_list(options["batch_sizes"], "--batch-sizes"),
            warmup=options["warmup"],
            iterations=options["iterations"],
        ),
        calibration=parse_calibration(options),
        force=options["force"],
        gates=parse_gates(options.get("gates"), options["overrides"], options.get("baseline")),
        baseline=Path(options["baseline"]) if options.get("baseline") else None,
        accuracy_target=parse_accuracy_target(options),
        selection=parse_selection(options),
        cpu=parse_cpu(options["cpu"]),
        model_options=parse_model_options(options),
    )
