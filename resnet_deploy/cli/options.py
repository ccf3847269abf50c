"""The option groups commands share (decorators), their parsing into the option dataclasses, and `common`:
--quiet/--debug on every command, errors turned into one line and their exit code.

A setting's flag is derived from its declaration (options.Setting, in the module of its options type) by
`settings_options`; the option types build themselves from the parsed values (`from_values`).
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .. import config
from ..calibration.methods import CalibrationOptions
from ..engines import registry
from ..errors import ResnetDeployError, UserError
from ..files import raise_if_interrupted
from ..models import ModelOptions
from ..options import AccuracyTarget, SelectionOptions, Setting

WEIGHTS_HELP = config.WEIGHTS.help


def setting_option(setting: Setting) -> Callable[..., Any]:
    """The click option of a setting: `--key-name`, its type (PATH, INTEGER, FLOAT, TEXT or a flag), default, help."""
    if setting.kind is bool:
        return click.option(setting.flag, is_flag=True, help=setting.help)
    kind = {Path: click.Path(path_type=Path), str: None}.get(setting.kind, setting.kind)
    shown = {"default": setting.default, "show_default": True} if setting.default is not None else {}
    return click.option(setting.flag, type=kind, help=setting.help, **shown)


def settings_options(*settings: Setting) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A decorator adding the options of `settings`, in that order."""
    return lambda fn: with_options(fn, [setting_option(s) for s in settings])


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
            raise_if_interrupted()  # a Ctrl-C whose KeyboardInterrupt a library swallowed still ends the run as one
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
        setting_option(config.GATES),
        click.option(
            "--set",
            "overrides",
            multiple=True,
            metavar="ENGINE.KEY[.BATCH]=VALUE",
            help="Set one threshold, overriding the gates file (repeatable), e.g. 'onnxruntime-int8.min_top1_agreement=0.995' "
            "or '*-fp16.max_p99_ms.8=30'.",
        ),
        setting_option(config.BASELINE),
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
    """--calib-size/--seed/--calib-method/--percentile/--exclude-layers and --cpu, shared by build, quantize and layers
    (each places its own --calib-cache)."""
    flags = [s for s in CalibrationOptions.SETTINGS if s.key != "calib_cache"]
    return settings_options(*flags, config.CPU)(fn)


def selection_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--select-data/--select-size: the images that measure sensitivity (build, quantize, layers)."""
    return settings_options(*SelectionOptions.SETTINGS)(fn)


def accuracy_target_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The selection data and --max-top1-drop/--min-top1-agreement/--max-excluded (build, quantize)."""
    return settings_options(*SelectionOptions.SETTINGS, *AccuracyTarget.SETTINGS)(fn)


def parse_accuracy_target(options: dict[str, Any]) -> AccuracyTarget | None:
    if options.get("max_top1_drop") is None and options.get("min_top1_agreement") is None:
        return None
    return AccuracyTarget.from_values(options)


def engine_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--engines and the settings of every CPU runtime of the registry but ONNX Runtime (whose --providers each
    command places before --threads): shared by `build`, `validate` and `bench`."""
    settings = [s for k in registry.KINDS if k.cpu_runtime and k.name != "onnxruntime" for s in k.settings]
    return settings_options(config.ENGINES, *settings)(fn)


model_options = settings_options(*ModelOptions.SETTINGS)  # --ema, --mean/--std/..., --labels: build, fold, validate, bench


def check_limits(options: dict[str, Any]) -> None:
    """The numeric options a command has, each within its range (the settings' limits)."""
    for setting in config.SETTINGS:
        if setting.limits is not None and options.get(setting.key) is not None:
            setting.check(options[setting.key])


def parse_gates(gates_file: Path | None, overrides: tuple[str, ...], baseline: Path | None):
    from ..gates import Gates, load_gates

    if gates_file is None and not overrides:
        if baseline is not None:
            raise UserError("--baseline is the reference for latency gates; give --gates FILE (or --set) too")
        return None
    gates = load_gates(Path(gates_file)) if gates_file is not None else Gates(())
    return gates.with_overrides(overrides)


def parse_calibration(options: dict[str, Any]) -> CalibrationOptions:
    return CalibrationOptions.from_values(options)
