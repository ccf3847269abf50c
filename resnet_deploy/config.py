"""Typed settings for a build: enums instead of strings, frozen dataclasses, TOML loading."""

from __future__ import annotations

import enum
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .calibration.methods import CalibrationOptions, check_percentile, check_regex, parse_method
from .data import CROP_MODES, CROP_PCT_RANGE, INTERPOLATIONS, MEAN_RANGE, STD_RANGE, PreprocessOverrides
from .engines import registry
from .engines.kind import EngineSettings
from .engines.openvino import MAX_STATIC_SHAPES, OpenVINOOptions, PerformanceHint, ShapeMode  # noqa: F401 - re-exported
from .engines.ort import OrtOptions
from .engines.trt import HardwareCompat, TensorRTOptions
from .errors import MissingDependency, UserError
from .isa import CpuKind, parse_cpu

if TYPE_CHECKING:
    from .gates import Gates


class Precision(enum.StrEnum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


class Target(enum.StrEnum):
    """Who consumes a (quantized) model: the Q/DQ recipe depends on it."""

    ONNXRUNTIME = "onnxruntime"
    TENSORRT = "tensorrt"


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


def parse_choice(kind: type[enum.Enum], text: str, option: str):
    """One value of an enum from its text; an unknown one raises a UserError listing the valid ones."""
    try:
        return kind(text.strip().lower())
    except ValueError:
        valid = ", ".join(m.value for m in kind)
        raise UserError(f"{option}: unknown value {text!r}; valid values: {valid}") from None


def parse_enum_list(kind: type[enum.Enum], text: str, option: str) -> tuple:
    """'fp32,int8' -> (Precision.FP32, Precision.INT8); unknown names raise a UserError."""
    values = []
    for part in (p.strip().lower() for p in text.split(",")):
        if not part:
            continue
        try:
            value = kind(part)
        except ValueError:
            valid = ", ".join(m.value for m in kind)
            raise UserError(f"{option}: unknown value {part!r}; valid values: {valid}") from None
        if value not in values:
            values.append(value)
    if not values:
        raise UserError(f"{option}: give at least one value")
    return tuple(values)


MAX_BATCH = 4096  # the largest batch an exported model accepts (its dynamic batch axis)

# Ranges of the numeric settings, whether given as flags or as config keys.
LIMITS: dict[str, tuple[int, int]] = {
    "num_classes": (1, 1_000_000),
    "threads": (1, 1024),
    "batch_size": (1, MAX_BATCH),
    "opset": (18, 1000),  # the dynamo exporter's minimum; the export stage checks the exporter's maximum
    "warmup": (0, 1_000_000),
    "iterations": (1, 1_000_000),
    "workspace_mib": (1, 1 << 20),  # 1 TiB: anything larger is a typo
    "builder_optimization_level": (0, 5),
    "opt_batch_size": (1, MAX_BATCH),
    "calib_size": (1, 10_000_000),
    "seed": (0, 2**32 - 1),
    "max_excluded": (0, 100_000),  # nodes a mixed-precision search may leave in higher precision
    "select_size": (1, 10_000_000),
    "openvino_streams": (1, 1024),
}


def check_range(name: str, value: int, option: str) -> int:
    low, high = LIMITS[name]
    if not low <= value <= high:
        raise UserError(f"{option} must be between {low} and {high}, got {value}")
    return value


def parse_int_list(text: str, option: str, minimum: int = 1, maximum: int = MAX_BATCH) -> tuple[int, ...]:
    """'1,8' -> (1, 8), sorted and unique."""
    try:
        values = sorted({int(p) for p in text.split(",") if p.strip()})
    except ValueError:
        raise UserError(f"{option}: expected whole numbers separated by commas, got {text!r}") from None
    if not values or values[0] < minimum or values[-1] > maximum:
        raise UserError(f"{option}: expected numbers between {minimum} and {maximum}, got {text!r}")
    return tuple(values)


def parse_input_size(text: str, option: str = "--input-size") -> tuple[int, int, int]:
    """'3x224x224' -> (3, 224, 224)."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        c, h, w = (int(p) for p in parts)
    except ValueError:
        raise UserError(f"{option}: expected CxHxW such as 3x224x224, got {text!r}") from None
    if c != 3 or not (8 <= h <= 4096 and 8 <= w <= 4096):
        raise UserError(f"{option}: expected 3 channels and 8..4096 pixels per side, got {text!r}")
    return (c, h, w)


def parse_channel_values(text: str, option: str, low: float, high: float) -> tuple[float, float, float]:
    """'0.5' or '0.485,0.456,0.406' -> three floats (one value is used for every channel), each within low..high."""
    try:
        values = [float(p) for p in str(text).split(",")]
    except ValueError:
        raise UserError(f"{option}: expected 1 or 3 numbers separated by commas, got {text!r}") from None
    if len(values) not in (1, 3):
        raise UserError(f"{option}: expected 1 or 3 numbers (one per channel), got {len(values)} in {text!r}")
    if not all(math.isfinite(v) and low <= v <= high for v in values):
        raise UserError(f"{option}: each value must be between {low:g} and {high:g}, got {text!r}")
    return (values[0],) * 3 if len(values) == 1 else (values[0], values[1], values[2])


def parse_mean(text: str, option: str = "--mean") -> tuple[float, float, float]:
    return parse_channel_values(text, option, *MEAN_RANGE)


def parse_std(text: str, option: str = "--std") -> tuple[float, float, float]:
    return parse_channel_values(text, option, *STD_RANGE)


def check_crop_pct(value: float, option: str = "--crop-pct") -> float:
    low, high = CROP_PCT_RANGE
    if isinstance(value, bool) or not (math.isfinite(value) and low <= value <= high):
        raise UserError(f"{option} must be between {low:g} and {high:g} (the crop's share of the resized image), got {value}")
    return float(value)


def parse_word(text: str, option: str, valid: tuple[str, ...]) -> str:
    word = str(text).strip().lower()
    if word not in valid:
        raise UserError(f"{option}: unknown value {text!r}; valid values: {', '.join(valid)}")
    return word


def parse_interpolation(text: str, option: str = "--interpolation") -> str:
    return parse_word(text, option, INTERPOLATIONS)


def parse_crop_mode(text: str, option: str = "--crop-mode") -> str:
    return parse_word(text, option, CROP_MODES)


def preprocess_overrides(
    mean: str | None = None,
    std: str | None = None,
    crop_pct: float | None = None,
    crop_mode: str | None = None,
    interpolation: str | None = None,
) -> PreprocessOverrides:
    """The preprocessing options (flags or config keys), each checked: None leaves the arch's default."""
    return PreprocessOverrides(
        interpolation=None if interpolation is None else parse_interpolation(interpolation),
        mean=None if mean is None else parse_mean(mean),
        std=None if std is None else parse_std(std),
        crop_pct=None if crop_pct is None else check_crop_pct(crop_pct),
        crop_mode=None if crop_mode is None else parse_crop_mode(crop_mode),
    )


@dataclass(frozen=True)
class ModelOptions:
    """How to read the user's model beyond --arch and --weights: which weights of a training checkpoint (the EMA
    copy with `ema`), the preprocessing it was trained with, and its class names (`labels`: one per line)."""

    ema: bool = False
    preprocess: PreprocessOverrides = field(default_factory=PreprocessOverrides)
    labels: Path | None = None


@dataclass(frozen=True)
class BenchmarkOptions:
    batch_sizes: tuple[int, ...] = (1, 8)
    warmup: int = 10
    iterations: int = 50
    # Stop a batch size early once this many seconds were spent timing it (after >= 5 iterations).
    max_seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.iterations < 1:
            raise UserError("benchmark: --warmup must be >= 0 and --iterations >= 1")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise UserError("benchmark: --batch-sizes must be whole numbers >= 1")


def parse_hardware_compat(text: str, option: str = "--hardware-compat") -> HardwareCompat:
    return parse_choice(HardwareCompat, text, option)


def check_top1_drop(value: float, option: str = "--max-top1-drop") -> float:
    if not (math.isfinite(value) and 0 <= value <= 100):
        raise UserError(f"{option} is in points of top-1 (0..100), got {value}")
    return float(value)


def check_top1_agreement(value: float, option: str = "--min-top1-agreement") -> float:
    if not (math.isfinite(value) and 0 < value <= 1):
        raise UserError(f"{option} is a fraction in (0, 1] (e.g. 0.99), got {value}")
    return float(value)


@dataclass(frozen=True)
class AccuracyTarget:
    """What an INT8 model must keep (`--max-top1-drop`, `--min-top1-agreement`), and how far the mixed-precision
    search may go to get there (`--max-excluded` nodes left in higher precision). Both limits may be given."""

    max_top1_drop_points: float | None = None  # top-1 on labels: FP32 minus INT8, in points
    min_top1_agreement: float | None = None  # fraction (0..1] of samples whose top-1 equals the FP32 model's
    max_excluded: int = 8

    def __post_init__(self) -> None:
        if self.max_top1_drop_points is None and self.min_top1_agreement is None:
            raise UserError("an accuracy target needs --max-top1-drop or --min-top1-agreement")
        if self.max_top1_drop_points is not None:
            check_top1_drop(self.max_top1_drop_points)
        if self.min_top1_agreement is not None:
            check_top1_agreement(self.min_top1_agreement)
        check_range("max_excluded", self.max_excluded, "--max-excluded")

    @property
    def needs_labels(self) -> bool:
        return self.max_top1_drop_points is not None

    def met(self, accuracy: Any) -> bool:
        """Whether an `Accuracy` (validate.py) meets every limit given."""
        return self.shortfall(accuracy) == 0.0

    def shortfall(self, accuracy: Any) -> float:
        """Points of top-1 missing to the target (0 when met): the best-effort model is the one missing least."""
        missing = 0.0
        if self.min_top1_agreement is not None:
            missing += max(0.0, (self.min_top1_agreement - accuracy.top1_agreement) * 100.0)
        if self.max_top1_drop_points is not None:
            drop = accuracy.top1_drop_points
            missing += float("inf") if drop is None else max(0.0, drop - self.max_top1_drop_points)
        return 0.0 if missing < 1e-9 else missing

    def describe(self) -> str:
        parts = []
        if self.min_top1_agreement is not None:
            parts.append(f"top-1 agreement >= {self.min_top1_agreement * 100:.2f}%")
        if self.max_top1_drop_points is not None:
            parts.append(f"top-1 drop <= {self.max_top1_drop_points:.2f} points")
        return " and ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_top1_drop_points": self.max_top1_drop_points,
            "min_top1_agreement": self.min_top1_agreement,
            "max_excluded": self.max_excluded,
            "description": self.describe(),
        }


@dataclass(frozen=True)
class SelectionOptions:
    """The images that measure layer sensitivity and choose the excluded nodes (never those that report).

    `data` (--select-data) names them; without it, `size` images are held out of --calib-data (at most
    half of it) and calibration draws from the rest. `size` (--select-size) caps --select-data too.
    """

    data: Path | None = None
    size: int = 256

    def __post_init__(self) -> None:
        check_range("select_size", self.size, "--select-size")


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
