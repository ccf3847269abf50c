"""A build's settings (`BuildConfig`) and its TOML file: composes the option types defined in the layers below."""

from __future__ import annotations

import enum
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .calibration.methods import CalibrationOptions, check_percentile, check_regex, parse_method
from .data import (
    PreprocessOverrides,  # noqa: F401 - re-exported
    check_crop_pct,
    parse_crop_mode,
    parse_interpolation,
    parse_mean,
    parse_std,
    preprocess_overrides,  # noqa: F401 - re-exported for cli.py
)
from .engines import registry
from .engines.kind import EngineSettings
from .engines.openvino import MAX_STATIC_SHAPES, OpenVINOOptions, PerformanceHint, ShapeMode  # noqa: F401 - re-exported
from .engines.ort import OrtOptions
from .engines.trt import HardwareCompat, TensorRTOptions
from .errors import MissingDependency, UserError
from .isa import CpuKind, parse_cpu
from .models import ModelOptions

# The option types and parsers config composes, re-exported: `from .config import ...` keeps working.
from .options import (  # noqa: F401
    LIMITS,
    MAX_BATCH,
    AccuracyTarget,
    BenchmarkOptions,
    Precision,
    SelectionOptions,
    Target,
    check_range,
    check_top1_agreement,
    check_top1_drop,
    parse_channel_values,
    parse_choice,
    parse_enum_list,
    parse_input_size,
    parse_int_list,
    parse_word,
)

if TYPE_CHECKING:
    from .gates import Gates


# A CPU runtime that runs the ONNX models (`--engines`), one member per such kind of the engine registry
# (Engine.ONNXRUNTIME, Engine.OPENVINO); TensorRT engines come with `--target tensorrt`.
Engine = enum.StrEnum("Engine", {k.name.upper(): k.name for k in registry.KINDS if k.cpu_runtime}, module=__name__)


def default_engines() -> tuple[Engine, ...]:
    """ONNX Runtime, plus every other CPU runtime that can run here (quietly left out when not)."""
    return tuple(e for e in Engine if e is Engine.ONNXRUNTIME or registry.kind(e.value).available() is None)


def parse_engines(text: str | None) -> tuple[Engine, ...]:
    """'onnxruntime,openvino' -> (Engine.ONNXRUNTIME, Engine.OPENVINO); None or '' -> the default.

    An engine asked for by name that cannot run here is an error (exit 2), not a silent skip.
    """
    if text is None or not text.strip():
        return default_engines()
    engines = parse_enum_list(Engine, text, "--engines")
    for engine in engines:
        missing = registry.kind(engine.value).available()
        if missing:
            raise MissingDependency(f"--engines {engine.value}: {missing}, or leave {engine.value} out of --engines")
    return engines


def check_engines(engines: tuple[Engine, ...], openvino: OpenVINOOptions) -> None:
    """The CPU engines and OpenVINO's options fit together (build, validate and bench)."""
    if not engines:
        raise UserError(f"--engines: give at least one of {', '.join(Engine)}")
    if openvino.bf16 and Engine.OPENVINO not in engines:
        raise UserError("--openvino-bf16 adds an OpenVINO engine; add openvino to --engines")


def parse_hardware_compat(text: str, option: str = "--hardware-compat") -> HardwareCompat:
    return parse_choice(HardwareCompat, text, option)


@dataclass(frozen=True)
class BuildConfig:
    """Everything `resnet-deploy build` needs. Paths are resolved by the caller."""

    arch: str | None  # None: from a hub folder's config.json (--weights DIR)
    weights: Path
    val_data: Path
    out: Path
    num_classes: int | None = None
    input_size: tuple[int, int, int] | None = None
    calib_data: Path | None = None
    precisions: tuple[Precision, ...] = (Precision.FP32,)
    targets: tuple[Target, ...] = (Target.ONNXRUNTIME,)
    providers: tuple[str, ...] = ("cpu",)
    engines: tuple[Engine, ...] = field(default_factory=default_engines)  # CPU runtimes that run the ONNX models
    openvino: OpenVINOOptions = field(default_factory=OpenVINOOptions)
    threads: int | None = None
    batch_size: int = 32
    opset: int | None = None
    benchmark: BenchmarkOptions = field(default_factory=BenchmarkOptions)
    tensorrt: TensorRTOptions = field(default_factory=TensorRTOptions)
    require_engine: bool = False  # no TensorRT/GPU for --target tensorrt is an error (exit 2), not a skip
    calibration: CalibrationOptions = field(default_factory=CalibrationOptions)
    force: bool = False
    gates: Gates | None = None  # thresholds applied to the report; failures make the build exit 1
    baseline: Path | None = None  # an earlier report.json for max_latency_regression_pct
    accuracy_target: AccuracyTarget | None = None  # INT8 mixed-precision search (--max-top1-drop, ...)
    selection: SelectionOptions = field(default_factory=SelectionOptions)
    cpu: CpuKind | None = None  # the CPU kind onnxruntime-target INT8 is made for (--cpu; None: this machine's)
    model_options: ModelOptions = field(default_factory=ModelOptions)  # --ema, --mean/--std/..., --labels

    def __post_init__(self) -> None:
        if self.accuracy_target is not None and Precision.INT8 not in self.precisions:
            raise UserError(
                "--max-top1-drop / --min-top1-agreement choose which nodes INT8 keeps in higher precision; "
                "add int8 to --precision"
            )
        reduced = [p for p in self.precisions if p is not Precision.FP32]
        if reduced and self.calib_data is None:
            names = ",".join(p.value for p in reduced)
            raise UserError(
                f"--precision {names} needs --calib-data: INT8 ranges and FP16's overflow check come from calibration images"
            )
        check_engines(self.engines, self.openvino)
        if self.openvino.bf16 and Precision.FP32 not in self.precisions:
            raise UserError("--openvino-bf16 runs the FP32 model in bfloat16; add fp32 to --precision")

    def engine_settings(self) -> EngineSettings:
        """What the engines of this build need: --engines (and TensorRT with --target tensorrt), each kind's options."""
        kinds = tuple(e.value for e in self.engines) + ((Target.TENSORRT.value,) if Target.TENSORRT in self.targets else ())
        return EngineSettings(
            kinds=kinds,
            threads=self.threads,
            batch_sizes=self.benchmark.batch_sizes,
            largest_batch=self.batch_size,
            opt_batch=self.tensorrt.opt_batch_size,
            folder=self.out.absolute(),
            options=(OrtOptions(self.providers), self.openvino, self.tensorrt),
        )


def _check_providers(text: str, option: str) -> object:
    from .engines.ort import parse_providers

    return parse_providers(text, option)


# Keys of a build TOML file, the type each must have, and (for strings) the parser that checks the value.
_TOML_KEYS: dict[str, tuple[type, Any]] = {
    "arch": (str, None),
    "weights": (str, None),
    "val_data": (str, None),
    "calib_data": (str, None),
    "out": (str, None),
    "num_classes": (int, None),
    "input_size": (str, parse_input_size),
    "precision": (str, lambda text, option: parse_enum_list(Precision, text, option)),
    "target": (str, lambda text, option: parse_enum_list(Target, text, option)),
    "providers": (str, _check_providers),
    "engines": (str, lambda text, option: parse_enum_list(Engine, text, option)),
    "openvino_hint": (str, lambda text, option: parse_choice(PerformanceHint, text, option)),
    "openvino_streams": (int, None),
    "openvino_cache_dir": (str, None),
    "openvino_shapes": (str, lambda text, option: parse_choice(ShapeMode, text, option)),
    "openvino_bf16": (bool, None),
    "threads": (int, None),
    "batch_size": (int, None),
    "opset": (int, None),
    "batch_sizes": (str, parse_int_list),
    "warmup": (int, None),
    "iterations": (int, None),
    "workspace_mib": (int, None),
    "builder_optimization_level": (int, None),
    "timing_cache": (str, None),
    "hardware_compat": (str, lambda text, option: parse_hardware_compat(text, option)),
    "opt_batch_size": (int, None),
    "gates": (str, None),
    "baseline": (str, None),
    "calib_size": (int, None),
    "seed": (int, None),
    "calib_method": (str, lambda text, option: parse_method(text, option)),
    "percentile": ((int, float), check_percentile),
    "exclude_layers": (str, check_regex),
    "calib_cache": (str, None),
    "max_top1_drop": ((int, float), lambda value, option: check_top1_drop(value, option)),
    "min_top1_agreement": ((int, float), lambda value, option: check_top1_agreement(value, option)),
    "max_excluded": (int, None),
    "select_data": (str, None),
    "select_size": (int, None),
    "cpu": (str, lambda text, option: parse_cpu(text, option)),
    "ema": (bool, None),
    "mean": (str, lambda text, option: parse_mean(text, option)),
    "std": (str, lambda text, option: parse_std(text, option)),
    "crop_pct": ((int, float), lambda value, option: check_crop_pct(value, option)),
    "crop_mode": (str, lambda text, option: parse_crop_mode(text, option)),
    "interpolation": (str, lambda text, option: parse_interpolation(text, option)),
    "labels": (str, None),
}

# Keys whose values are paths (relative ones are taken relative to the TOML file's folder).
PATH_KEYS = frozenset(
    {
        "weights",
        "val_data",
        "calib_data",
        "out",
        "gates",
        "baseline",
        "timing_cache",
        "calib_cache",
        "select_data",
        "openvino_cache_dir",
        "labels",
    }
)


def load_toml_options(path: Path) -> dict[str, Any]:
    """Read a build TOML file into CLI option values; unknown keys, wrong types and bad values raise UserError.

    Every message names the file and the key. Relative paths in the file are taken relative to its folder.
    """
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist; check the --config path") from None
    except IsADirectoryError:
        raise UserError(f"config file {path} is a folder; give a .toml file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"config file {path} is not valid TOML ({exc}); fix the file") from None
    except OSError as exc:
        raise UserError(f"config file {path} cannot be read ({exc.strerror}); check its permissions") from None
    options: dict[str, Any] = {}
    for key, value in data.items():
        if key not in _TOML_KEYS:
            valid = ", ".join(sorted(_TOML_KEYS))
            raise UserError(f"config file {path}: unknown key {key!r}; valid keys: {valid}")
        expected, parse = _TOML_KEYS[key]
        label = f"config file {path}: key {key!r}"
        if (isinstance(value, bool) and expected is not bool) or not isinstance(value, expected):
            kind = {int: "a whole number", str: "a string", bool: "true or false"}.get(expected, "a number")
            raise UserError(f"{label} must be {kind}, got {type(value).__name__} {value!r}"[:300])
        if key in LIMITS:
            check_range(key, value, label)
        elif parse is not None:
            parse(value, label)
        elif isinstance(value, str) and (not value.strip() or "\0" in value):
            raise UserError(f"{label} must not be empty")
        if key in PATH_KEYS:
            value = os.path.abspath(Path(path).parent / value)
        options[key] = value
    return options
