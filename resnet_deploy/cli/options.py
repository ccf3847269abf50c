"""The option groups commands share (decorators), their parsing into the option dataclasses, and `common`:
--quiet/--debug on every command, errors turned into one line and their exit code."""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..errors import ResnetDeployError, UserError

WEIGHTS_HELP = (
    "Weights: a state_dict or training checkpoint (.pth/.pt/.ckpt/.pth.tar/.safetensors: Lightning, timm train.py, "
    "torchvision references) or a hub folder (config.json + model.safetensors)."
)


def common(fn: Callable[..., int | None]) -> Callable[..., None]:
    """--quiet/--debug on every command; errors -> one line on stderr and their exit code."""

    @click.option("--quiet", "-q", is_flag=True, help="No progress bars or status lines on stderr.")
    @click.option("--debug", is_flag=True, help="Show the full traceback of an error.")
    @functools.wraps(fn)
    def wrapper(*args: Any, quiet: bool, debug: bool, **kwargs: Any) -> None:
        from ..progress import Progress, RichProgress

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


def gate_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--gates/--set/--baseline/--junit/--summary, shared by `build` and `gate`."""
    return with_options(fn, [
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


def with_options(fn: Callable[..., Any], options: list[Callable[..., Any]]) -> Callable[..., Any]:
    for option in reversed(options):
        fn = option(fn)
    return fn


def calibration_flags(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--calib-size/--seed/--calib-method/--percentile/--exclude-layers, shared by build, quantize and layers."""
    return with_options(
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


def selection_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--select-data/--select-size: the images that measure sensitivity (build, quantize, layers)."""
    return with_options(
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


def accuracy_target_options(fn: Callable[..., Any]) -> Callable[..., Any]:
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
    return selection_options(with_options(fn, options))


def parse_accuracy_target(options: dict[str, Any]):
    from ..config import AccuracyTarget

    if options.get("max_top1_drop") is None and options.get("min_top1_agreement") is None:
        return None
    return AccuracyTarget(options.get("max_top1_drop"), options.get("min_top1_agreement"), options["max_excluded"])


def parse_selection(options: dict[str, Any]):
    from ..config import SelectionOptions

    return SelectionOptions(Path(options["select_data"]) if options.get("select_data") else None, options["select_size"])


def engine_options(fn: Callable[..., Any]) -> Callable[..., Any]:
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


def model_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--ema, the preprocessing the model was trained with, --labels: shared by build, fold, validate and bench."""
    return with_options(fn, [
        click.option("--ema", is_flag=True, help="Use the EMA weights of a training checkpoint (state_dict_ema, model_ema)."),
        click.option("--mean", help="Normalization mean the model was trained with: 1 or 3 values (default: the arch's)."),
        click.option("--std", help="Normalization std the model was trained with: 1 or 3 values (default: the arch's)."),
        click.option("--crop-pct", type=float, help="Share of the resized image kept by the crop, 0.1..1 (default: the arch's)."),
        click.option("--crop-mode", help="center, squash (resize to the input size) or border (default: the arch's)."),
        click.option("--interpolation", help="bilinear, bicubic, nearest, box, hamming or lanczos (default: the arch's)."),
        click.option("--labels", type=click.Path(path_type=Path), help="Class names, one per line, in classifier order."),
    ])  # fmt: skip


def parse_model_options(options: dict[str, Any]):
    """ModelOptions from the --ema/--mean/--std/--crop-pct/--crop-mode/--interpolation/--labels values."""
    from ..config import ModelOptions, preprocess_overrides

    preprocess = preprocess_overrides(
        options.get("mean"), options.get("std"), options.get("crop_pct"), options.get("crop_mode"), options.get("interpolation")
    )
    labels = Path(options["labels"]) if options.get("labels") else None
    return ModelOptions(ema=bool(options.get("ema")), preprocess=preprocess, labels=labels)


def parse_openvino(options: dict[str, Any]):
    from ..config import OpenVINOOptions, PerformanceHint, ShapeMode, parse_choice

    return OpenVINOOptions(
        hint=parse_choice(PerformanceHint, options["openvino_hint"], "--openvino-hint"),
        streams=options.get("openvino_streams"),
        cache_dir=Path(options["openvino_cache_dir"]) if options.get("openvino_cache_dir") else None,
        shapes=parse_choice(ShapeMode, options["openvino_shapes"], "--openvino-shapes"),
        bf16=bool(options.get("openvino_bf16")),
    )


def check_limits(options: dict[str, Any]) -> None:
    """The numeric options a command has, each within its range (config.LIMITS)."""
    from ..config import LIMITS, check_range

    for key in LIMITS:
        if options.get(key) is not None:
            check_range(key, options[key], f"--{key.replace('_', '-')}")


def parse_gates(gates_file: Path | None, overrides: tuple[str, ...], baseline: Path | None):
    from ..gates import Gates, load_gates

    if gates_file is None and not overrides:
        if baseline is not None:
            raise UserError("--baseline is the reference for latency gates; give --gates FILE (or --set) too")
        return None
    gates = load_gates(Path(gates_file)) if gates_file is not None else Gates(())
    return gates.with_overrides(overrides)


def parse_calibration(options: dict[str, Any]):
    from ..calibration.methods import CalibrationOptions, parse_method

    return CalibrationOptions(
        size=options["calib_size"],
        seed=options["seed"],
        method=parse_method(options["calib_method"]),
        percentile=float(options["percentile"]),
        exclude_layers=options.get("exclude_layers") or None,
        cache=Path(options["calib_cache"]) if options.get("calib_cache") else None,
    )
