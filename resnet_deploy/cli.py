"""The `resnet-deploy` command line. The only module that knows about click, terminals and exit codes."""

from __future__ import annotations

import functools
import os
import signal
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .errors import ResnetDeployError, UserError

WEIGHTS_HELP = (
    "Weights: a state_dict or training checkpoint (.pth/.pt/.ckpt/.pth.tar/.safetensors: Lightning, timm train.py, "
    "torchvision references) or a hub folder (config.json + model.safetensors)."
)

EPILOG_BUILD = """\b
Example:
  resnet-deploy build --arch resnet18 --weights weights.pth --input-size 3x32x32 \\
      --calib-data data/calib --val-data data/val --precision fp32 --out out/
"""


def _common(fn: Callable[..., int | None]) -> Callable[..., None]:
    """--quiet/--debug on every command; errors -> one line on stderr and their exit code."""

    @click.option("--quiet", "-q", is_flag=True, help="No progress bars or status lines on stderr.")
    @click.option("--debug", is_flag=True, help="Show the full traceback of an error.")
    @functools.wraps(fn)
    def wrapper(*args: Any, quiet: bool, debug: bool, **kwargs: Any) -> None:
        from .progress import Progress, RichProgress

        progress = Progress() if quiet else RichProgress()
        try:
            with progress:
                code = fn(*args, progress=progress, **kwargs)
        except ResnetDeployError as exc:
            if debug:
                traceback.print_exc()
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted: no output was left half written", err=True)
            sys.exit(130)
        except BrokenPipeError:  # stdout's reader went away (`... | head`): no error line, the shell's SIGPIPE code
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush cannot raise again
            sys.exit(141)
        except Exception as exc:  # noqa: BLE001 - an unexpected failure still gets one line
            if debug:
                traceback.print_exc()
            detail = str(exc).splitlines()[0][:300] if str(exc) else ""
            click.echo(f"internal error: {type(exc).__name__}: {detail} (rerun with --debug and report it)", err=True)
            sys.exit(1)
        sys.exit(code or 0)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="resnet-deploy")
def cli() -> None:
    """Trained ResNet weights -> BN-folded ONNX -> validated, timed inference engines."""


# -------------------------------------------------------------------------------------------- build


def _gate_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--gates/--set/--baseline/--junit/--summary, shared by `build` and `gate`."""
    return _with_options(fn, [
        click.option("--gates", type=click.Path(path_type=Path), help="TOML file of thresholds per engine name or glob."),
        click.option(
            "--set",
            "overrides",
            multiple=True,
            metavar="ENGINE.KEY[.BATCH]=VALUE",
            help="Set one threshold, overriding the gates file (repeatable), e.g. 'onnxruntime-int8.min_top1_agreement=0.995' "
            "or '*-fp16.max_p99_ms.8=30'.",
        ),
        click.option("--baseline", type=click.Path(path_type=Path), help="Earlier report.json for max_latency_regression_pct."),
        click.option(
            "--junit", type=click.Path(path_type=Path), help="Write the gate results as JUnit XML (replaced if present)."
        ),
        click.option(
            "--summary", type=click.Path(path_type=Path), help="Write a Markdown summary of the gates (replaced if present)."
        ),
    ])  # fmt: skip


def _with_options(fn: Callable[..., Any], options: list[Callable[..., Any]]) -> Callable[..., Any]:
    for option in reversed(options):
        fn = option(fn)
    return fn


def _calibration_flags(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--calib-size/--seed/--calib-method/--percentile/--exclude-layers, shared by build, quantize and layers."""
    return _with_options(
        fn,
        [
            click.option(
                "--calib-size", type=int, default=512, show_default=True, help="Calibration images drawn from --calib-data."
            ),
            click.option("--seed", type=int, default=0, show_default=True, help="Seed of the calibration and selection draws."),
            click.option(
                "--calib-method", default="entropy", show_default=True, help="INT8 activation ranges: max, entropy or percentile."
            ),
            click.option("--percentile", type=float, default=99.99, show_default=True, help="For --calib-method percentile."),
            click.option(
                "--exclude-layers", help="Regex of node names / module paths kept in higher precision (e.g. '^conv1$|^fc$')."
            ),
            click.option(
                "--cpu",
                default="host",
                show_default=True,
                help="CPU the onnxruntime-target INT8 model is for: host (this machine's kind), vnni (x86 with AVX-512 "
                "VNNI/AVX-VNNI/AMX, ARM64: 8-bit weights) or no-vnni (x86 AVX2/AVX-512 without VNNI: 7-bit weights, "
                "whose U8S8 sums do not saturate).",
            ),
        ],
    )


def _selection_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--select-data/--select-size: the images that measure sensitivity (build, quantize, layers)."""
    return _with_options(
        fn,
        [
            click.option(
                "--select-data",
                type=click.Path(path_type=Path),
                help="Images that measure sensitivity and choose the nodes (default: held out of --calib-data).",
            ),
            click.option("--select-size", type=int, default=256, show_default=True, help="Images used from the selection data."),
        ],
    )


def _accuracy_target_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--max-top1-drop/--min-top1-agreement/--max-excluded and the selection data (build, quantize)."""
    options = [
        click.option(
            "--max-top1-drop",
            type=float,
            help="INT8 accuracy target: top-1 (on labels) may drop at most this many points; nodes are left in higher "
            "precision until it holds.",
        ),
        click.option(
            "--min-top1-agreement",
            type=float,
            help="INT8 accuracy target: top-1 must agree with the FP32 model on this fraction of images (e.g. 0.99).",
        ),
        click.option(
            "--max-excluded", type=int, default=8, show_default=True, help="Most nodes the search leaves in higher precision."
        ),
    ]
    return _selection_options(_with_options(fn, options))


def _accuracy_target(options: dict[str, Any]):
    from .config import AccuracyTarget

    if options.get("max_top1_drop") is None and options.get("min_top1_agreement") is None:
        return None
    return AccuracyTarget(options.get("max_top1_drop"), options.get("min_top1_agreement"), options["max_excluded"])


def _selection(options: dict[str, Any]):
    from .config import SelectionOptions

    return SelectionOptions(Path(options["select_data"]) if options.get("select_data") else None, options["select_size"])


def _engine_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--engines and the OpenVINO settings, shared by `build`, `validate` and `bench`."""
    options = [
        click.option(
            "--engines",
            help="CPU engines that run the ONNX models, comma-separated: onnxruntime, openvino "
            "(default: onnxruntime, plus openvino when it is installed).",
        ),
        click.option("--openvino-hint", default="latency", show_default=True, help="OpenVINO: latency or throughput."),
        click.option("--openvino-streams", type=int, help="OpenVINO: parallel inference streams (default: the hint's)."),
        click.option(
            "--openvino-cache-dir",
            type=click.Path(path_type=Path),
            help="OpenVINO: folder for compiled models, loaded from there on the next start.",
        ),
        click.option(
            "--openvino-shapes",
            default="static",
            show_default=True,
            help="OpenVINO: static (one compiled model per batch size; faster) or dynamic (one for all).",
        ),
        click.option("--openvino-bf16", is_flag=True, help="OpenVINO: also run the FP32 model in bfloat16 (openvino-bf16)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _model_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--ema, the preprocessing the model was trained with, --labels: shared by build, fold, validate and bench."""
    return _with_options(fn, [
        click.option("--ema", is_flag=True, help="Use the EMA weights of a training checkpoint (state_dict_ema, model_ema)."),
        click.option("--mean", help="Normalization mean the model was trained with: 1 or 3 values (default: the arch's)."),
        click.option("--std", help="Normalization std the model was trained with: 1 or 3 values (default: the arch's)."),
        click.option("--crop-pct", type=float, help="Share of the resized image kept by the crop, 0.1..1 (default: the arch's)."),
        click.option("--crop-mode", help="center, squash (resize to the input size) or border (default: the arch's)."),
        click.option("--interpolation", help="bilinear, bicubic, nearest, box, hamming or lanczos (default: the arch's)."),
        click.option("--labels", type=click.Path(path_type=Path), help="Class names, one per line, in classifier order."),
    ])  # fmt: skip


def _model_settings(options: dict[str, Any]):
    """ModelOptions from the --ema/--mean/--std/--crop-pct/--crop-mode/--interpolation/--labels values."""
    from .config import ModelOptions, preprocess_overrides

    preprocess = preprocess_overrides(
        options.get("mean"), options.get("std"), options.get("crop_pct"), options.get("crop_mode"), options.get("interpolation")
    )
    labels = Path(options["labels"]) if options.get("labels") else None
    return ModelOptions(ema=bool(options.get("ema")), preprocess=preprocess, labels=labels)


def _openvino_options(options: dict[str, Any]):
    from .config import OpenVINOOptions, PerformanceHint, ShapeMode, parse_choice

    return OpenVINOOptions(
        hint=parse_choice(PerformanceHint, options["openvino_hint"], "--openvino-hint"),
        streams=options.get("openvino_streams"),
        cache_dir=Path(options["openvino_cache_dir"]) if options.get("openvino_cache_dir") else None,
        shapes=parse_choice(ShapeMode, options["openvino_shapes"], "--openvino-shapes"),
        bf16=bool(options.get("openvino_bf16")),
    )


@cli.command(epilog=EPILOG_BUILD)
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="TOML file of these options (flags override).")
@click.option("--arch", help="ResNet-family architecture (timm or torchvision name, e.g. resnet50; a hub folder names its own).")
@click.option("--weights", type=click.Path(path_type=Path), help=WEIGHTS_HELP)
@click.option("--val-data", type=click.Path(path_type=Path), help="Validation images (ImageFolder or flat) or .npz.")
@click.option("--calib-data", type=click.Path(path_type=Path), help="Calibration images or .npz (INT8; also used for checks).")
@click.option("--out", type=click.Path(path_type=Path), help="Output folder.")
@click.option("--num-classes", type=int, help="Classifier outputs (default: from the weights).")
@click.option("--input-size", help="CxHxW, e.g. 3x224x224 (default: the arch's).")
@_model_options
@click.option("--precision", default="fp32", show_default=True, help="Comma-separated: fp32, fp16, int8.")
@click.option(
    "--target",
    default="onnxruntime",
    show_default=True,
    help="Who consumes the models, comma-separated: onnxruntime, tensorrt (INT8 recipe per target; tensorrt adds engines).",
)
@_calibration_flags
@click.option("--calib-cache", type=click.Path(path_type=Path), help="calib.json of an earlier run: reused when nothing changed.")
@click.option("--providers", default="cpu", show_default=True, help="ONNX Runtime execution providers: cpu, cuda, tensorrt.")
@click.option("--threads", type=int, help="CPU threads for PyTorch, ONNX Runtime and OpenVINO (default: all cores).")
@_engine_options
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
@_accuracy_target_options
@_gate_options
@_common
def build(
    progress, config_file: Path | None, junit: Path | None, summary: Path | None, triton_repo: Path | None, **options: Any
) -> int:
    """Run every stage: load, fold BN, export ONNX, build engines, validate against PyTorch, benchmark.

    With --gates (or --set), the report is gated like `resnet-deploy gate` does and a failing gate exits 1.
    """
    from .pipeline.build import build as run_build

    ctx = click.get_current_context()
    config = _build_config(ctx, config_file, options)
    if (junit or summary) and config.gates is None:
        raise UserError("--junit and --summary report gate results; give --gates FILE (or --set) too")
    if triton_repo is not None:  # refused before the build spends its minutes
        from .serving.repository import check_target, model_config_pb2

        model_config_pb2()
        check_target(triton_repo, config.force, "--triton-repo")
    report = run_build(config, progress)
    _print_summary(report.as_dict())
    if triton_repo is not None:
        from .serving.repository import write_repository

        _print_repository(write_repository(config.out, triton_repo, force=config.force, option="--triton-repo"))
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    for failure in report.failures:
        click.echo(f"FAILED {failure}", err=True)
    if report.gates is not None:
        _render_gates(report.gates.as_dict(), junit, summary)
    click.echo(f"report: {config.out / 'report.json'}, {config.out / 'report.md'}, {config.out / 'report.html'}")
    return report.return_code


def _build_config(ctx: click.Context, config_file: Path | None, options: dict[str, Any]):
    from .config import (
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
    from .engines.ort import parse_providers
    from .isa import parse_cpu

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
    _check_limits(options)
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
        openvino=_openvino_options(options),
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
        calibration=_calibration_options(options),
        force=options["force"],
        gates=_load_gates(options.get("gates"), options["overrides"], options.get("baseline")),
        baseline=Path(options["baseline"]) if options.get("baseline") else None,
        accuracy_target=_accuracy_target(options),
        selection=_selection(options),
        cpu=parse_cpu(options["cpu"]),
        model_options=_model_settings(options),
    )


def _check_limits(options: dict[str, Any]) -> None:
    """The numeric options a command has, each within its range (config.LIMITS)."""
    from .config import LIMITS, check_range

    for key in LIMITS:
        if options.get(key) is not None:
            check_range(key, options[key], f"--{key.replace('_', '-')}")


def _load_gates(gates_file: Path | None, overrides: tuple[str, ...], baseline: Path | None):
    from .gates import Gates, load_gates

    if gates_file is None and not overrides:
        if baseline is not None:
            raise UserError("--baseline is the reference for latency gates; give --gates FILE (or --set) too")
        return None
    gates = load_gates(Path(gates_file)) if gates_file is not None else Gates(())
    return gates.with_overrides(overrides)


def _render_gates(gates: dict[str, Any], junit: Path | None, summary: Path | None) -> None:
    from .artifacts import write_text_atomic
    from .gates import render

    for line in render.lines(gates):
        click.echo(line)
    if junit is not None:
        write_text_atomic(junit, render.junit(gates))
    if summary is not None:
        write_text_atomic(summary, render.markdown(gates))


# --------------------------------------------------------------------------------- gate, compare, report

EPILOG_GATE = """\b
Example:
  resnet-deploy gate out/report.json --gates gates.toml --baseline main/report.json \\
      --junit gates.xml --summary gates.md --set 'onnxruntime-int8.min_top1_agreement=0.995'
\b
Exit codes: 0 every gate passes, 1 a gate fails (a missing metric or a table matching no engine fails too),
2 bad input (unreadable report, bad gates file).
"""


@cli.command(epilog=EPILOG_GATE)
@click.argument("report_path", metavar="REPORT.json", type=click.Path(path_type=Path))
@_gate_options
@click.option("--html", "html_out", type=click.Path(path_type=Path), help="Also write the report as HTML with the gate results.")
@_common
def gate(progress, report_path: Path, gates: Path | None, overrides, baseline, junit, summary, html_out) -> int:
    """Check a report.json against accuracy and latency thresholds: a line per gate, exit 1 if any fails."""
    from .artifacts import write_text_atomic
    from .gates import evaluate
    from .reports.schema import read_report

    thresholds = _load_gates(gates, overrides, baseline)
    if thresholds is None:
        raise UserError("give the thresholds: --gates FILE and/or --set ENGINE.KEY=VALUE")
    report = read_report(report_path)
    old = read_report(baseline, "baseline") if baseline is not None else None
    result = evaluate(thresholds, report, old, report_label=str(report_path), baseline_label=baseline and str(baseline))
    _render_gates(result.as_dict(), junit, summary)
    if html_out is not None:
        from .reports.html import render_html

        write_text_atomic(html_out, render_html(report, result.as_dict()))
    return result.return_code


@cli.command(epilog="\b\nExample:\n  resnet-deploy compare main/report.json out/report.json > compare.md")
@click.argument("old_path", metavar="OLD.json", type=click.Path(path_type=Path))
@click.argument("new_path", metavar="NEW.json", type=click.Path(path_type=Path))
@_common
def compare(progress, old_path: Path, new_path: Path) -> int:
    """Accuracy and latency of two reports side by side, with deltas and % changes (Markdown on stdout)."""
    from .reports.compare import compare_reports
    from .reports.schema import read_report

    old, new = read_report(old_path, "OLD report"), read_report(new_path, "NEW report")
    click.echo(compare_reports(old, new, str(old_path), str(new_path)), nl=False)
    return 0


@cli.command(
    epilog="\b\nExample:\n  resnet-deploy report out/report.json --html report.html\n"
    "  resnet-deploy report out/report.json --html report.html --layers layers/layers.json"
)
@click.argument("report_path", metavar="REPORT.json", type=click.Path(path_type=Path))
@click.option("--html", "html_out", type=click.Path(path_type=Path), help="Write the self-contained HTML page here.")
@click.option("--markdown", "markdown_out", type=click.Path(path_type=Path), help="Write the Markdown report here.")
@click.option(
    "--layers", "layers_path", type=click.Path(path_type=Path), help="layers.json of `resnet-deploy layers`: adds its chart."
)
@_common
def report(progress, report_path: Path, html_out: Path | None, markdown_out: Path | None, layers_path: Path | None) -> int:
    """Render report.html (or report.md) again from a report.json, e.g. one downloaded from CI."""
    from .artifacts import write_text_atomic
    from .reports.html import render_html
    from .reports.markdown import to_markdown
    from .reports.schema import read_layers, read_report

    if html_out is None and markdown_out is None:
        raise UserError("give --html OUT.html and/or --markdown OUT.md")
    if layers_path is not None and html_out is None:
        raise UserError("--layers adds a chart to the HTML page; give --html OUT.html too")
    data = read_report(report_path)
    layers = read_layers(layers_path) if layers_path is not None else None
    if html_out is not None:
        write_text_atomic(html_out, render_html(data, layers=layers))
        click.echo(f"wrote {html_out}")
    if markdown_out is not None:
        write_text_atomic(markdown_out, to_markdown(data))
        click.echo(f"wrote {markdown_out}")
    return 0


def _calibration_options(options: dict[str, Any]):
    from .calibration.methods import CalibrationOptions, parse_method

    return CalibrationOptions(
        size=options["calib_size"],
        seed=options["seed"],
        method=parse_method(options["calib_method"]),
        percentile=float(options["percentile"]),
        exclude_layers=options.get("exclude_layers") or None,
        cache=Path(options["calib_cache"]) if options.get("calib_cache") else None,
    )


# ------------------------------------------------------------------------------------ single stages


def _check_images(data: Path | None, preprocess, count: int = 32):
    """Real images for a stage check (from --data), else seeded random inputs, with a note on stderr."""
    import numpy as np

    from .data import first_images, open_dataset

    if data is not None:
        return first_images(open_dataset(data, preprocess, option="--data"), count)
    click.echo(f"note: no --data given; checking on {count} random inputs instead of real images", err=True)
    rng = np.random.default_rng(0)
    return rng.standard_normal((count, *preprocess.input_size), dtype=np.float32)


def _load_reference(arch: str | None, weights: Path, num_classes: int | None, input_size: str | None, options):
    """The user's model: load_model with the model options (--ema, --mean, ..., --labels)."""
    from .config import parse_input_size
    from .models import load_model

    size = parse_input_size(input_size) if input_size else None
    return load_model(arch, weights, num_classes, size, _model_settings(options))


def _log_model(progress, model) -> None:
    """What was loaded (the weights used, the effective preprocessing, the class names), once, after the input checks."""
    for line in model.describe():
        progress.log(line)


def _open_labelled(path: Path, model, option: str):
    """A data set preprocessed for `model`, labelled by its class names, its labels checked against its classes."""
    from .data import check_labels, open_dataset

    dataset = open_dataset(path, model.preprocess, option=option, class_names=model.class_names)
    check_labels(dataset, model.num_classes, option)
    return dataset


def _refuse_existing(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise UserError(f"--out {path} already exists; pass --force to replace it, or choose another path")


@cli.command(
    epilog="\b\nExample:\n  resnet-deploy fold --arch resnet50 --weights w.pth --data val/ --out model.folded.safetensors"
)
@click.option("--arch", help="ResNet-family architecture (a hub folder names its own).")
@click.option("--weights", required=True, type=click.Path(path_type=Path), help=WEIGHTS_HELP)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folded model (.safetensors + .json sidecar).")
@click.option("--data", type=click.Path(path_type=Path), help="Images or .npz to verify the folding on.")
@click.option("--num-classes", type=int, help="Classifier outputs (default: from the weights).")
@click.option("--input-size", help="CxHxW (default: the arch's).")
@_model_options
@click.option("--force", is_flag=True, help="Replace an existing --out file.")
@_common
def fold(
    progress,
    arch: str | None,
    weights: Path,
    out: Path,
    data: Path | None,
    num_classes: int | None,
    input_size: str | None,
    force: bool,
    **options: Any,
) -> int:
    """Fold every Conv->BatchNorm pair and verify the folded model against the original."""
    from .pipeline.fold import fold_and_verify, save_folded

    _refuse_existing(out, force)
    model = _load_reference(arch, weights, num_classes, input_size, options)
    if data is not None:
        from .data import first_images

        dataset = _open_labelled(data, model, "--data")
        model, images = model.name_classes_after(dataset, "--data"), first_images(dataset, 32)
    else:
        images = _check_images(None, model.preprocess)
    _log_model(progress, model)
    gm, result = fold_and_verify(model, images)
    save_folded(gm, model, result, out)
    click.echo(
        f"folded {result.folded} BatchNorm layers, {len(result.remaining)} remain; "
        f"max abs diff {result.parity.max_abs_diff:.3g} (relative {result.parity.max_rel_diff:.3g}) -> {out}"
    )
    for remaining in result.remaining:
        click.echo(f"  kept {remaining.name}: {remaining.reason}")
    return 0


@cli.command(epilog="\b\nExample:\n  resnet-deploy export --folded model.folded.safetensors --data val/ --out model.fp32.onnx")
@click.option("--folded", required=True, type=click.Path(path_type=Path), help="Output of `resnet-deploy fold`.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="ONNX file to write.")
@click.option("--data", type=click.Path(path_type=Path), help="Images or .npz for the parity check.")
@click.option("--opset", type=int, help="ONNX opset (default: the exporter's).")
@click.option("--force", is_flag=True, help="Replace an existing --out file.")
@_common
def export(progress, folded: Path, out: Path, data: Path | None, opset: int | None, force: bool) -> int:
    """Export a folded model to ONNX (dynamic batch), check it, and verify it on ONNX Runtime."""
    from .artifacts import FoldedModelArtifact
    from .pipeline.export import export_onnx
    from .pipeline.fold import load_folded

    _refuse_existing(out, force)
    artifact = FoldedModelArtifact.read(folded)
    info = artifact.info()
    images = _check_images(data, info.preprocess)
    module = load_folded(artifact)
    onnx_artifact = export_onnx(module, info, images, out, opset, artifact.fold)
    parity = onnx_artifact.details["parity"]
    click.echo(f"exported opset {onnx_artifact.opset}; ONNX Runtime max abs diff {parity['max_abs_diff']:.3g} -> {out}")
    return 0


@cli.command(
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
@_calibration_flags
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
@_accuracy_target_options
@_common
def quantize(progress, onnx_path: Path, calib_data: Path, out: Path, val_data: Path | None, **options: Any) -> int:
    """FP32 ONNX + calibration images -> INT8 Q/DQ ONNX (per target) or FP16 ONNX, with calib.json.

    With --max-top1-drop / --min-top1-agreement, INT8 leaves the most sensitive nodes in higher precision until
    the target holds on the selection images, then checks it on --val-data; exit 1 when it cannot be met (the
    best model found is written as <out>.best-effort.onnx).
    """
    from .artifacts import OnnxArtifact, read_onnx
    from .calibration.calibrate import CALIB_NAME, CalibrationSet, SelectionSet, calibrate
    from .calibration.graph import excluded_nodes, load_onnx
    from .config import Precision, Target, parse_enum_list
    from .data import Preprocess, first_images, open_dataset
    from .isa import parse_cpu

    cpu = parse_cpu(options["cpu"])
    precisions = parse_enum_list(Precision, options["precision"], "--precision")
    targets = parse_enum_list(Target, options["target"], "--target")
    if len(precisions) > 1 or len(targets) > 1:
        raise UserError("quantize writes one model: give one --precision and one --target (build makes several)")
    precision, target = precisions[0], targets[0]
    if precision is Precision.FP32:
        raise UserError("--precision fp32: the input already is FP32; choose int8 or fp16")
    _check_limits(options)
    accuracy_target = _accuracy_target(options)
    if accuracy_target is not None and precision is not Precision.INT8:
        raise UserError(
            "--max-top1-drop / --min-top1-agreement choose which INT8 nodes stay in higher precision; use --precision int8"
        )
    if accuracy_target is not None and val_data is None:
        raise UserError(
            "an accuracy target needs --val-data: the images that report the final accuracy (the nodes are chosen on "
            "other images, held out of --calib-data or --select-data)"
        )
    _refuse_existing(out, options["force"])
    read_onnx(onnx_path)  # refuses a non-ONNX file or unsafe external data before anything reads it
    fp32 = OnnxArtifact.read(onnx_path)
    if fp32.precision != "fp32":
        raise UserError(f"--onnx {onnx_path} is a {fp32.precision} model; give the FP32 ONNX written by export or build")
    calibration_options = _calibration_options({**options, "calib_cache": options["calib_cache"] or out.parent / CALIB_NAME})
    fixed = excluded_nodes(load_onnx(fp32.path), calibration_options.exclude_layers)  # fail before calibrating
    preprocess, names = Preprocess.from_dict(fp32.preprocess), fp32.class_names  # the sidecar's: as the model was trained
    calib = open_dataset(calib_data, preprocess, option="--calib-data", class_names=names)
    val = open_dataset(val_data, preprocess, option="--val-data", class_names=names) if val_data is not None else None
    selection = None
    if accuracy_target is not None:
        calib, selection = SelectionSet.split(calib, _selection(options), calibration_options.seed, preprocess, names)
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
        from .calibration.fp16 import convert_fp16

        artifact = convert_fp16(fp32, calibration, out, calibration_options.exclude_layers)
        info = artifact.details["fp16"]
        click.echo(f"fp16: {info['fp16_nodes']} nodes in FP16, {len(info['fp32_nodes'])} kept in FP32 -> {out}")
    elif accuracy_target is None:
        from .calibration.quantize import quantize_int8

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

    from .calibration.quantize import judged_exactly, write_int8
    from .calibration.search import best_effort_path, mixed_precision_int8, target_on
    from .config import Target
    from .data import first_images
    from .engines.ort import OrtRunner
    from .pipeline.benchmark import latency_cost
    from .pipeline.validate import ReferenceOutputs, validate
    from .reports.report import target_failure

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
    _print_search(details["mixed_precision"])
    click.echo(
        f"int8 ({target}): {len(search.excluded)} node(s) left in higher precision, "
        f"{artifact.details['quantization']['quantized_nodes']} quantized -> {path}"
        + (f" (+ {fp16_path.name}: FP16 elsewhere, for TensorRT)" if fp16_path else "")
    )
    failure = target_failure(f"int8 ({target})", str(path), artifact.details["quantization"])
    if failure:
        click.echo(f"FAILED {failure}", err=True)
    return 1 if failure else 0


def _print_search(search: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(show_edge=False, pad_edge=False, title=f"target: {search['target']['description']}")
    for title in ("step", "phase", "nodes in higher precision", "top-1 agree", "drop (pts)", "target"):
        table.add_column(title, justify="right" if title in ("step", "top-1 agree", "drop (pts)") else "left")
    for i, step in enumerate(search["steps"], 1):
        drop = step.get("top1_drop_points")
        table.add_row(
            str(i), step["phase"], ", ".join(step["excluded"]) or "-", f"{step['top1_agreement'] * 100:.2f}%",
            "n/a" if drop is None else f"{drop:+.2f}", "met" if step["met"] else "missed",
        )  # fmt: skip
    _console().print(table)
    on_val = search.get("on_val")
    if on_val:
        click.echo(
            f"on --val-data: {on_val['top1_agreement'] * 100:.2f}% top-1 agreement: {'met' if on_val['met'] else 'MISSED'}"
        )
    for cost in search.get("latency_cost") or []:
        click.echo(
            f"latency cost ({cost['engine']}, batch {cost['batch_size']}): {cost['before_p50_ms']:.3f} -> "
            f"{cost['after_p50_ms']:.3f} ms p50 ({cost['cost_ms']:+.3f} ms)"
        )


EPILOG_LAYERS = """\b
Example:
  resnet-deploy layers --onnx out/model.fp32.onnx --calib-data calib/ --target tensorrt --out layers/
\b
Writes DIR/layers.json (every quantized node, most sensitive first), DIR/layers.html (the same with a bar
chart) and DIR/calib.json. The sensitivity is measured on --select-data, or on images held out of
--calib-data (calibration draws from the rest). Each node is quantized again without it: one quantization
and one pass over the selection images per node.
"""


@cli.command(epilog=EPILOG_LAYERS)
@click.option("--onnx", "onnx_path", required=True, type=click.Path(path_type=Path), help="FP32 ONNX from `export` or `build`.")
@click.option("--calib-data", required=True, type=click.Path(path_type=Path), help="Calibration images or .npz.")
@click.option("--target", default="onnxruntime", show_default=True, help="INT8 recipe: onnxruntime or tensorrt.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder for layers.json, layers.html, calib.json.")
@_calibration_flags
@click.option("--calib-cache", type=click.Path(path_type=Path), help="Statistics cache (default: OUT/calib.json).")
@click.option("--threads", type=int, help="CPU threads for ONNX Runtime.")
@click.option("--force", is_flag=True, help="Replace existing files in --out.")
@_selection_options
@_common
def layers(progress, onnx_path: Path, calib_data: Path, out: Path, **options: Any) -> int:
    """Per-layer INT8 sensitivity: the SQNR each quantized node adds, and the top-1 agreement quantizing it costs."""
    from .artifacts import OnnxArtifact, read_onnx, write_json_atomic, write_text_atomic
    from .calibration.calibrate import CALIB_NAME, CalibrationSet, SelectionSet, calibrate
    from .calibration.graph import excluded_nodes, load_onnx
    from .calibration.sensitivity import measure_layers
    from .config import Target, parse_enum_list
    from .data import Preprocess, first_images, open_dataset
    from .isa import parse_cpu
    from .reports.html import render_layers_html

    targets = parse_enum_list(Target, options["target"], "--target")
    if len(targets) > 1:
        raise UserError("layers measures one INT8 recipe: give one --target")
    _check_limits(options)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    if (out / "layers.json").exists() and not options["force"]:
        raise UserError(f"{out / 'layers.json'} already exists; pass --force to replace it, or choose another --out")
    read_onnx(onnx_path)  # refuses a non-ONNX file or unsafe external data before anything reads it
    fp32 = OnnxArtifact.read(onnx_path)
    if fp32.precision != "fp32":
        raise UserError(f"--onnx {onnx_path} is a {fp32.precision} model; give the FP32 ONNX written by export or build")
    calibration_options = _calibration_options({**options, "calib_cache": options["calib_cache"] or out / CALIB_NAME})
    fixed = excluded_nodes(load_onnx(fp32.path), calibration_options.exclude_layers)
    preprocess, names = Preprocess.from_dict(fp32.preprocess), fp32.class_names
    calib = open_dataset(calib_data, preprocess, option="--calib-data", class_names=names)
    pool, selection = SelectionSet.split(calib, _selection(options), calibration_options.seed, preprocess, names)
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
    _print_layers(data)
    click.echo(f"layers: {out / 'layers.json'}, {out / 'layers.html'}")
    return 0


def _print_layers(data: dict[str, Any]) -> None:
    from rich.table import Table

    full = data["fully_quantized"]
    title = (
        f"{data['target']} INT8, fully quantized: {full['top1_agreement'] * 100:.2f}% top-1 agreement on "
        f"{data['selection']['samples']} images ({data['selection']['origin']})"
    )
    table = Table(show_edge=False, pad_edge=False, title=title)
    for column in ("rank", "node", "module", "op", "SQNR dB", "agreement cost (pts)"):
        table.add_column(column, justify="right" if column in ("rank", "SQNR dB", "agreement cost (pts)") else "left")
    for rank, row in enumerate(data["nodes"], 1):
        sqnr, cost = row.get("sqnr_db"), row.get("top1_agreement_drop_points")
        table.add_row(
            str(rank), row["node"], row.get("module") or "", row["op_type"],
            "n/a" if sqnr is None else f"{sqnr:.2f}", "n/a" if cost is None else f"{cost:+.2f}",
        )  # fmt: skip
    _console().print(table)


def _console():
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=200)  # a log file or a pipe: do not squeeze tables


def _runners(
    onnx_paths: tuple[Path, ...],
    engine_paths: tuple[Path, ...],
    providers: str,
    threads: int | None,
    options,
    batch_sizes: tuple[int, ...],
):
    """Runners for --onnx files on each engine of --engines and TensorRT runners for --engine files (at least one)."""
    from .config import Engine, check_engines, parse_engines
    from .engines.openvino import OpenVINORunner
    from .engines.ort import OrtRunner, describe_onnx, ort_backend_label, parse_providers
    from .engines.trt import TensorRTRunner
    from .isa import host_isa
    from .isa import mismatch as cpu_mismatch
    from .pipeline.kernels import made_for_cpu
    from .pipeline.plan import ort_tensorrt_options
    from .reports.report import engine_name

    if not onnx_paths and not engine_paths:
        raise UserError("give at least one --onnx model or --engine file")
    chain = parse_providers(providers)
    engines = parse_engines(options.get("engines"))
    openvino = _openvino_options(options)
    check_engines(engines, openvino)
    runners = []
    host = host_isa()
    for path in onnx_paths:
        precision, target = describe_onnx(path)
        mismatch = cpu_mismatch(made_for_cpu(path), host, str(path))
        if mismatch:
            click.echo(f"warning: {mismatch}", err=True)
        if Engine.ONNXRUNTIME in engines:
            name = engine_name(ort_backend_label(chain), precision, target)
            runners.append(OrtRunner(path, name, precision, target, chain, threads, ort_tensorrt_options(batch_sizes)))
        if Engine.OPENVINO in engines:
            compute = [precision, "bf16"] if openvino.bf16 and precision == "fp32" else [precision]
            runners += [OpenVINORunner(path, engine_name("openvino", p, target), p, target, threads, openvino) for p in compute]
    runners += [TensorRTRunner(path) for path in engine_paths]
    return runners


def _runner_path(runner) -> str:
    return str(getattr(runner, "onnx_path", None) or getattr(runner, "engine_path", ""))


def _recorded_preprocess(runner):
    """The preprocessing an ONNX model's sidecar records (the one it was trained with), or None without a sidecar."""
    from .artifacts import OnnxArtifact, sidecar_path
    from .data import Preprocess

    path = getattr(runner, "onnx_path", None)
    if path is None or not sidecar_path(path).is_file():
        return None
    try:
        return Preprocess.from_dict(OnnxArtifact.read(path).preprocess)
    except UserError:  # a stale or foreign sidecar: timing needs only inputs of the right size
        return None


def _input_shape(runner) -> tuple[int, int, int]:
    from .engines.ort import onnx_input_shape

    chw = getattr(runner, "chw", None)
    return tuple(chw) if chw else onnx_input_shape(runner.onnx_path)


@cli.command(
    epilog="\b\nExample:\n  resnet-deploy validate --arch resnet18 --weights w.pth --onnx out/model.fp32.onnx --val-data val/"
)
@click.option("--arch", help="Architecture of the PyTorch reference (a hub folder names its own).")
@click.option("--weights", required=True, type=click.Path(path_type=Path), help="Reference weights (file or hub folder).")
@click.option(
    "--onnx",
    "onnx_paths",
    multiple=True,
    type=click.Path(path_type=Path),
    help="ONNX model(s) to validate on ONNX Runtime (repeatable).",
)
@click.option("--engine", "engine_paths", multiple=True, type=click.Path(path_type=Path), help="TensorRT engine(s) (repeatable).")
@click.option("--val-data", required=True, type=click.Path(path_type=Path), help="Validation images or .npz.")
@click.option("--num-classes", type=int)
@click.option("--input-size", help="CxHxW (default: the arch's).")
@_model_options
@click.option("--providers", default="cpu", show_default=True)
@click.option("--threads", type=int)
@_engine_options
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Also write the results as JSON.")
@_common
def validate(
    progress,
    arch,
    weights,
    onnx_paths,
    engine_paths,
    val_data,
    num_classes,
    input_size,
    providers,
    threads,
    batch_size,
    json_out,
    **options,
) -> int:
    """Accuracy of engines against the PyTorch reference (and labels, when the data has them)."""
    from .artifacts import write_json_atomic
    from .engines.ort import describe_onnx, exact_runner, onnx_input_shape
    from .engines.pytorch import PyTorchRunner
    from .isa import host_isa
    from .pipeline.kernels import broken_model, kernel_loss, made_for_cpu
    from .pipeline.validate import validate_all

    model = _load_reference(arch, weights, num_classes, input_size, options)
    for path in onnx_paths:
        shape, size = onnx_input_shape(path), tuple(model.preprocess.input_size)
        if shape != size:
            want = "x".join(map(str, shape))
            raise UserError(f"--onnx {path} takes {want} images, not {'x'.join(map(str, size))}; pass --input-size {want}")
    dataset = _open_labelled(val_data, model, "--val-data")
    model = model.name_classes_after(dataset, "--val-data")
    runners = _runners(onnx_paths, engine_paths, providers, threads, options, (batch_size,))
    _log_model(progress, model)
    exact = {  # each reduced-precision file under its exact ONNX semantics: the model's own accuracy
        str(path): exact_runner(path, precision, target, threads)
        for path in onnx_paths
        for precision, target in [describe_onnx(path)]
        if precision != "fp32"
    }
    accuracies = validate_all(
        PyTorchRunner(model.module, threads=threads), [*runners, *exact.values()], dataset, model.num_classes, batch_size,
        progress,
    )  # fmt: skip
    accuracies, exact_accuracies = accuracies[: len(runners)], dict(zip(exact, accuracies[len(runners) :]))
    host = host_isa()
    rows = []
    for r, a in zip(runners, accuracies):
        reference = exact_accuracies.get(_runner_path(r))
        loss = None if reference is None else kernel_loss(r.name, r.target, made_for_cpu(_runner_path(r)), a, reference, host)
        rows.append({
            "name": r.name,
            "backend": r.backend,
            "precision": r.precision,
            "target": r.target,
            "path": _runner_path(r),
            "accuracy": a.as_dict(),
            "reference_accuracy": None if reference is None else reference.as_dict(),
            "kernel_loss": loss,
            "latency": [],
        })  # fmt: skip
    _print_summary({"reference": {"name": "pytorch-fp32", "latency": []}, "engines": rows})
    if json_out:
        write_json_atomic(json_out, {"model": model.info.as_dict(), "engines": rows})
    broken = [line for path, a in exact_accuracies.items() if (line := broken_model(path, a))]
    for line in broken:
        click.echo(f"FAILED {line}", err=True)
    return 1 if broken or any(not a.passed for a in accuracies) else 0


@cli.command(
    epilog="\b\nExample:\n  resnet-deploy bench --onnx out/model.fp32.onnx --arch resnet18 --weights w.pth --batch-sizes 1,8,32"
)
@click.option("--onnx", "onnx_paths", multiple=True, type=click.Path(path_type=Path), help="ONNX model(s) to time (repeatable).")
@click.option(
    "--engine", "engine_paths", multiple=True, type=click.Path(path_type=Path), help="TensorRT engine(s) to time (repeatable)."
)
@click.option("--arch", help="Also time the PyTorch reference (needs --weights).")
@click.option("--weights", type=click.Path(path_type=Path), help="Weights of the PyTorch reference (file or hub folder).")
@click.option("--data", type=click.Path(path_type=Path), help="Images or .npz to time on (default: random inputs).")
@_model_options
@click.option("--providers", default="cpu", show_default=True)
@click.option("--threads", type=int)
@_engine_options
@click.option("--batch-sizes", default="1,8", show_default=True)
@click.option("--warmup", type=int, default=10, show_default=True)
@click.option("--iterations", type=int, default=50, show_default=True)
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Also write the results as JSON.")
@_common
def bench(
    progress,
    onnx_paths,
    engine_paths,
    arch,
    weights,
    data,
    providers,
    threads,
    batch_sizes,
    warmup,
    iterations,
    json_out,
    **model_and_engine_options,
) -> int:
    """Latency percentiles and throughput of engines (and the PyTorch reference), each in its own block."""
    import dataclasses

    import numpy as np

    from .artifacts import write_json_atomic
    from .config import BenchmarkOptions, parse_int_list
    from .data import Preprocess, first_images, open_dataset
    from .engines.pytorch import PyTorchRunner
    from .pipeline.benchmark import benchmark_all

    options = BenchmarkOptions(parse_int_list(batch_sizes, "--batch-sizes"), warmup, iterations)
    runners = _runners(onnx_paths, engine_paths, providers, threads, model_and_engine_options, options.batch_sizes)
    shape = _input_shape(runners[0])
    if arch and not weights:
        raise UserError("--arch needs --weights (they add the PyTorch reference); give both or neither")
    if weights is not None and not arch and not Path(weights).is_dir():
        raise UserError("--weights needs --arch (they add the PyTorch reference) unless it is a hub folder")
    preprocess = _recorded_preprocess(runners[0]) if data is not None else None  # the model's own, from its sidecar
    if weights is not None:
        model = _load_reference(arch, weights, None, "x".join(map(str, shape)), model_and_engine_options)
        _log_model(progress, model)
        runners.insert(0, PyTorchRunner(model.module, threads=threads))
        preprocess = preprocess or model.preprocess
    if data is not None:
        given = _model_settings(model_and_engine_options).preprocess.given()  # --mean, ... override the recorded ones
        preprocess = dataclasses.replace(preprocess or Preprocess(input_size=shape), **given)
        images = first_images(open_dataset(data, preprocess, option="--data"), max(options.batch_sizes))
    else:
        images = np.random.default_rng(0).standard_normal((max(options.batch_sizes), *shape), dtype=np.float32)
    latencies = benchmark_all(runners, images, options, progress)
    rows = [
        {
            "name": r.name,
            "backend": r.backend,
            "precision": r.precision,
            "target": r.target,
            "accuracy": None,
            "latency": [x.as_dict() for x in lat],
            "details": r.describe(),
        }
        for r, lat in zip(runners, latencies)
    ]
    _print_summary({"reference": {"name": "", "latency": []}, "engines": rows})
    if json_out:
        write_json_atomic(json_out, {"engines": rows})
    return 0


# ------------------------------------------------------------------------------------------ serving

EPILOG_TRITON = """\b
Examples:
  resnet-deploy triton out/ --repo triton-repo/                     # ONNX Runtime / OpenVINO / TensorRT backends
  resnet-deploy triton out/ --repo triton-py/ --python-backend      # any Triton with the Python backend (CPU)
"""


@cli.command(epilog=EPILOG_TRITON)
@click.argument("build_dir", metavar="OUT", type=click.Path(path_type=Path))
@click.option("--repo", required=True, type=click.Path(path_type=Path), help="The model repository folder to write.")
@click.option(
    "--python-backend",
    is_flag=True,
    help="Serve each ONNX file from a model.py (ONNX Runtime or OpenVINO) through Triton's Python backend, on the CPU.",
)
@click.option("--force", is_flag=True, help="Replace an existing --repo.")
@click.option("--max-batch-size", type=int, help="max_batch_size (default: the build's largest --batch-sizes).")
@click.option("--preferred-batch-sizes", help="Dynamic batching's preferred batch sizes (default: the build's --batch-sizes).")
@click.option("--max-queue-delay-us", type=int, default=100, show_default=True, help="Dynamic batching's queue delay.")
@click.option("--instance-count", type=int, default=1, show_default=True, help="Model instances (instance_group count).")
@click.option(
    "--instance-kind",
    help="cpu or gpu, for the ONNX Runtime models (default: cpu; OpenVINO and the Python backend run on the CPU, "
    "TensorRT on the GPU).",
)
@click.option("--threads", type=int, help="Threads of each model instance's runtime (default: the runtime's).")
@click.option(
    "--python-env",
    type=click.Path(path_type=Path),
    help="--python-backend: the Python environment (EXECUTION_ENV_PATH) the models run in (default: this one).",
)
@click.option("--onnxruntime-tensorrt", is_flag=True, help="ONNX Runtime models: use ONNX Runtime's TensorRT accelerator (GPU).")
@_common
def triton(progress, build_dir: Path, repo: Path, force: bool, **options: Any) -> int:
    """Write a Triton model repository with one model per engine file of the build in OUT."""
    import sys

    from .config import parse_choice, parse_int_list
    from .serving.kinds import InstanceKind
    from .serving.repository import RepositoryOptions, write_repository

    repository_options = RepositoryOptions(
        python_backend=options["python_backend"],
        max_batch_size=options["max_batch_size"],
        preferred_batch_sizes=parse_int_list(options["preferred_batch_sizes"], "--preferred-batch-sizes")
        if options["preferred_batch_sizes"]
        else None,
        max_queue_delay_us=options["max_queue_delay_us"],
        instance_count=options["instance_count"],
        instance_kind=parse_choice(InstanceKind, options["instance_kind"], "--instance-kind")
        if options["instance_kind"]
        else None,
        threads=options["threads"],
        python_env=str(Path(options["python_env"]).absolute()) if options["python_env"] else sys.prefix,
        onnxruntime_tensorrt=options["onnxruntime_tensorrt"],
    )
    if options["python_env"] and not (Path(options["python_env"]) / "bin" / "activate").is_file():
        raise UserError(f"--python-env {options['python_env']} has no bin/activate; give a virtualenv (Triton sources it)")
    _print_repository(write_repository(build_dir, repo, repository_options, force))
    return 0


def _print_repository(exported) -> None:
    from rich.table import Table

    table = Table(show_edge=False, pad_edge=False, title=f"Triton model repository {exported.path}")
    for column in ("model", "engine", "served by", "max batch", "input"):
        table.add_column(column)
    for m in exported.models:
        served_by = f"python: {m.backend.split('-')[0]}" if exported.python_backend else m.backend
        table.add_row(m.name, m.engine, served_by, str(m.max_batch_size), f"{m.input.name} {list(m.input.dims)}")
    _console().print(table)
    for note in exported.notes:
        click.echo(f"note: {note}", err=True)


EPILOG_SERVE_CHECK = """\b
Example:
  resnet-deploy triton out/ --repo triton-py/ --python-backend
  resnet-deploy serve-check triton-py/ --val-data val/ --build out/ --concurrency 1,2,4,8
"""


@cli.command("serve-check", epilog=EPILOG_SERVE_CHECK)
@click.argument("repo", metavar="DIR", type=click.Path(path_type=Path))
@click.option("--val-data", required=True, type=click.Path(path_type=Path), help="Images (or .npz) sent to the server.")
@click.option(
    "--build",
    "build_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="The build's --out: its report gets a serving section.",
)
@click.option("--concurrency", default="1,2,4,8", show_default=True, help="Requests in flight, per level of the sweep.")
@click.option("--requests", type=int, default=500, show_default=True, help="Timed requests per level, at most.")
@click.option("--seconds", type=float, default=10.0, show_default=True, help="Seconds per level, at most.")
@click.option("--images", type=int, default=256, show_default=True, help="Validation images sent for the agreement check.")
@click.option("--models", help="Comma-separated model names (default: every model of the repository).")
@click.option(
    "--atol", type=float, default=1e-3, show_default=True, help="Largest logit difference allowed, relative to the largest logit."
)
@click.option("--threads", type=int, help="Threads of the in-process engine the served logits are checked against.")
@click.option(
    "--tritonserver", type=click.Path(path_type=Path), help="The tritonserver binary (default: PATH, then nvidia-pytriton's)."
)
@click.option("--grpc-port", type=int, help="The server's gRPC port on 127.0.0.1 (default: a free one).")
@click.option("--startup-timeout", type=float, default=120.0, show_default=True, help="Seconds the server has to become ready.")
@_common
def serve_check(progress, repo: Path, val_data: Path, build_dir: Path, **options: Any) -> int:
    """Serve a repository on a real tritonserver: served logits against the engine in process, latency under load."""
    from .config import parse_int_list
    from .data import Preprocess, first_images, open_dataset
    from .reports.schema import read_report
    from .serving.check import ServeCheckOptions, write_serving
    from .serving.check import serve_check as run_check
    from .serving.load import LoadOptions
    from .serving.repository import read_repository

    check_options = ServeCheckOptions(
        load=LoadOptions(
            parse_int_list(options["concurrency"], "--concurrency", maximum=256), options["requests"], options["seconds"]
        ),
        images=options["images"],
        models=tuple(m.strip() for m in options["models"].split(",") if m.strip()) if options["models"] else None,
        atol=options["atol"],
        threads=options["threads"],
        tritonserver=options["tritonserver"],
        grpc_port=options["grpc_port"],
        startup_timeout=options["startup_timeout"],
    )
    _check_limits(options)
    if not (Path(build_dir) / "report.json").is_file():
        raise UserError(f"--build {build_dir} has no report.json; give the --out folder of resnet-deploy build")
    report = read_report(Path(build_dir) / "report.json", "build report")
    read_repository(repo)  # a bad repository is refused before the data is read
    dataset = open_dataset(val_data, Preprocess.from_dict(report["model"]["preprocess"]))
    images = first_images(dataset, min(check_options.images, len(dataset)))
    section = run_check(repo, images, check_options, progress)
    write_serving(build_dir, section)
    _print_serving(section)
    for failure in section["failures"]:
        click.echo(f"FAILED {failure}", err=True)
    click.echo(f"report: {Path(build_dir) / 'report.json'}, {Path(build_dir) / 'report.md'}, {Path(build_dir) / 'report.html'}")
    return 1 if section["failures"] else 0


def _print_serving(section: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(
        show_edge=False, pad_edge=False, title=f"Triton {section['server'].get('version') or ''} ({section['server']['origin']})"
    )
    for column in ("model", "agreement", "conc.", "img/s", "p50 ms", "p99 ms", "queue us", "compute us", "mean batch"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for model in section["models"]:
        a = model["agreement"]
        agreement = f"{a['top1_agreement'] * 100:.2f}% ({'ok' if a['passed'] else 'FAILED'})"
        for i, level in enumerate(model["levels"]):
            server = level["server"]
            table.add_row(
                model["name"] if i == 0 else "", agreement if i == 0 else "", str(level["concurrency"]),
                _fmt(level["throughput_ips"], ".1f"), _fmt(level["p50_ms"], ".2f"), _fmt(level["p99_ms"], ".2f"),
                _fmt(server["queue_us"], ".0f"), _fmt(server["compute_us"], ".0f"), _fmt(server["mean_batch"], ".2f"),
            )  # fmt: skip
    _console().print(table)


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


# ------------------------------------------------------------------------------------------ output


def _print_summary(report: dict[str, Any]) -> None:
    """A short table on stdout: accuracy and latency per engine."""
    from rich.table import Table

    from .reports.report import int8_compute

    rows = [report["reference"], *report["engines"]] if report["reference"].get("latency") else report["engines"]
    batch_sizes = sorted({lat["batch_size"] for row in rows for lat in row.get("latency", [])})
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("engine")
    exact = any(row.get("reference_accuracy") for row in rows)  # the models' own accuracy (exact ONNX semantics)
    if any(row.get("accuracy") for row in rows):
        for title in ("top-1 agree", *(["exact agree"] if exact else []), "max abs diff", "top-1", "drop (pts)"):
            table.add_column(title, justify="right")
    for b in batch_sizes:
        table.add_column(f"b{b} p50 ms", justify="right")
        table.add_column(f"b{b} img/s", justify="right")
    has_accuracy = any(row.get("accuracy") for row in rows)
    for row in rows:
        search = (row.get("quantization") or {}).get("mixed_precision")
        cells = [row["name"] + ("" if not search or search["met"] else " (best effort: target missed)")]
        cells[0] += " (simulated INT8)" if int8_compute(row) else ""
        acc = row.get("accuracy")
        if has_accuracy:
            reference = row.get("reference_accuracy")
            exact_cell = [] if not exact else ["" if reference is None else f"{reference['top1_agreement'] * 100:.2f}%"]
            if row.get("error"):
                cells += ["not built", *exact_cell, "", "", ""]
            elif acc is None:
                top1 = report["reference"].get("top1")
                cells += ["reference", *exact_cell, "", "n/a" if top1 is None else f"{top1 * 100:.2f}%", ""]
            else:
                cells += [
                    f"{acc['top1_agreement'] * 100:.2f}%" + (" !" if row.get("kernel_loss") else ""),
                    *exact_cell,
                    "NaN/Inf" if acc.get("max_abs_diff") is None else f"{acc['max_abs_diff']:.3g}",
                    "n/a" if acc.get("top1") is None else f"{acc['top1'] * 100:.2f}%",
                    "n/a" if acc.get("top1_drop_points") is None else f"{acc['top1_drop_points']:+.2f}",
                ]
        for b in batch_sizes:
            lat = next((x for x in row.get("latency", []) if x["batch_size"] == b), None)
            cells += ["", ""] if lat is None else [f"{lat['p50_ms']:.2f}", f"{lat['throughput_ips']:.1f}"]
        table.add_row(*cells)
    _console().print(table)
    for row in rows:
        if row.get("kernel_loss"):
            click.echo(f"! kernel loss: {row['kernel_loss']}")


def main() -> None:
    """Console-script entry point: SIGTERM is handled like Ctrl-C, so outputs are cleaned up."""

    def _terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    # PIL warns about damaged files (corrupt EXIF, images between 1x and 2x its pixel limit, ...): a file
    # the loader cannot use is skipped and counted with its reason in the report, so these are only noise.
    warnings.filterwarnings("ignore", module=r"PIL\.")
    cli(prog_name="resnet-deploy")


if __name__ == "__main__":
    main()
