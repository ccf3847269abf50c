"""Typed settings for a build: enums instead of strings, frozen dataclasses, TOML loading."""

from __future__ import annotations

import enum
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .calibration.methods import CalibrationOptions
from .errors import UserError

if TYPE_CHECKING:
    from .gates import Gates


class Precision(enum.StrEnum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"

    def __str__(self) -> str:
        return self.value


class Target(enum.StrEnum):
    """Who consumes a (quantized) model: the Q/DQ recipe depends on it."""

    ONNXRUNTIME = "onnxruntime"
    TENSORRT = "tensorrt"

    def __str__(self) -> str:
        return self.value


class HardwareCompat(enum.StrEnum):
    """Which GPUs a TensorRT engine must run on besides the one that built it (`--hardware-compat`)."""

    NONE = "none"  # only GPUs of the building GPU's kind (fastest)
    AMPERE_PLUS = "ampere+"  # any Ampere or newer GPU (compute capability 8.0+)
    SAME_CC = "same-cc"  # any GPU of the building GPU's compute capability

    def __str__(self) -> str:
        return self.value

    @property
    def trt_name(self) -> str:
        """The member name of `tensorrt.HardwareCompatibilityLevel`."""
        return {"none": "NONE", "ampere+": "AMPERE_PLUS", "same-cc": "SAME_COMPUTE_CAPABILITY"}[self.value]


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


def parse_int_list(text: str, option: str, minimum: int = 1) -> tuple[int, ...]:
    """'1,8' -> (1, 8), sorted and unique."""
    try:
        values = sorted({int(p) for p in text.split(",") if p.strip()})
    except ValueError:
        raise UserError(f"{option}: expected whole numbers separated by commas, got {text!r}") from None
    if not values or values[0] < minimum:
        raise UserError(f"{option}: expected numbers >= {minimum}, got {text!r}")
    return tuple(values)


def parse_input_size(text: str) -> tuple[int, int, int]:
    """'3x224x224' -> (3, 224, 224)."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        c, h, w = (int(p) for p in parts)
    except ValueError:
        raise UserError(f"--input-size: expected CxHxW such as 3x224x224, got {text!r}") from None
    if c != 3 or not (8 <= h <= 4096 and 8 <= w <= 4096):
        raise UserError(f"--input-size: expected 3 channels and 8..4096 pixels per side, got {text!r}")
    return (c, h, w)


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


MAX_WORKSPACE_MIB = 1 << 20  # 1 TiB: anything larger is a typo


@dataclass(frozen=True)
class TensorRTOptions:
    """How TensorRT engines are built and run (`build --target tensorrt`). None means TensorRT's default."""

    workspace_mib: int | None = None  # limit of the builder's scratch memory pool
    builder_optimization_level: int | None = None  # 0..5; TensorRT's default is 3
    timing_cache: Path | None = None  # loaded before and saved after each build, so a rebuild is fast
    version_compatible: bool = False  # the engine also runs on later TensorRT versions (a bit slower)
    hardware_compat: HardwareCompat = HardwareCompat.NONE
    tf32: bool = False  # let FP32 layers use TF32 tensor cores (off: FP32 stays FP32)
    opt_batch_size: int | None = None  # the profile's opt batch (default: the median of --batch-sizes)
    cuda_graph: bool = False  # replay batch-1 inference from a captured CUDA graph

    def __post_init__(self) -> None:
        if self.workspace_mib is not None and not 1 <= self.workspace_mib <= MAX_WORKSPACE_MIB:
            raise UserError(f"--workspace-mib must be between 1 and {MAX_WORKSPACE_MIB}, got {self.workspace_mib}")
        level = self.builder_optimization_level
        if level is not None and not 0 <= level <= 5:
            raise UserError(f"--builder-optimization-level must be 0..5 (TensorRT's default is 3), got {level}")
        if not isinstance(self.hardware_compat, HardwareCompat):
            raise UserError(f"--hardware-compat: expected one of {', '.join(h.value for h in HardwareCompat)}")
        if self.opt_batch_size is not None and self.opt_batch_size < 1:
            raise UserError(f"--opt-batch-size must be >= 1, got {self.opt_batch_size}")
        if self.timing_cache is not None:
            cache = Path(self.timing_cache)
            if cache.is_dir():
                raise UserError(f"--timing-cache {cache} is a folder; give a file path (it is created if missing)")
            if not cache.parent.is_dir():
                raise UserError(f"--timing-cache {cache}: folder {cache.parent} does not exist; create it first")

    def as_dict(self) -> dict[str, Any]:
        return {
            "workspace_mib": self.workspace_mib,
            "builder_optimization_level": self.builder_optimization_level,
            "timing_cache": None if self.timing_cache is None else str(self.timing_cache),
            "version_compatible": self.version_compatible,
            "hardware_compat": self.hardware_compat.value,
            "tf32": self.tf32,
            "opt_batch_size": self.opt_batch_size,
            "cuda_graph": self.cuda_graph,
        }


def parse_hardware_compat(text: str) -> HardwareCompat:
    try:
        return HardwareCompat(text.strip().lower())
    except ValueError:
        valid = ", ".join(h.value for h in HardwareCompat)
        raise UserError(f"--hardware-compat: unknown value {text!r}; valid values: {valid}") from None


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
        drop = self.max_top1_drop_points
        if drop is not None and not (math.isfinite(drop) and 0 <= drop <= 100):
            raise UserError(f"--max-top1-drop is in points of top-1 (0..100), got {drop}")
        agreement = self.min_top1_agreement
        if agreement is not None and not (math.isfinite(agreement) and 0 < agreement <= 1):
            raise UserError(f"--min-top1-agreement is a fraction in (0, 1] (e.g. 0.99), got {agreement}")
        if self.max_excluded < 0:
            raise UserError(f"--max-excluded must be >= 0, got {self.max_excluded}")

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
        if self.size < 1:
            raise UserError(f"--select-size must be >= 1, got {self.size}")


@dataclass(frozen=True)
class BuildConfig:
    """Everything `resnet-deploy build` needs. Paths are resolved by the caller."""

    arch: str
    weights: Path
    val_data: Path
    out: Path
    num_classes: int | None = None
    input_size: tuple[int, int, int] | None = None
    calib_data: Path | None = None
    precisions: tuple[Precision, ...] = (Precision.FP32,)
    targets: tuple[Target, ...] = (Target.ONNXRUNTIME,)
    providers: tuple[str, ...] = ("cpu",)
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


# Keys of a build TOML file and the type each must have.
_TOML_KEYS: dict[str, type | tuple[type, ...]] = {
    "arch": str,
    "weights": str,
    "val_data": str,
    "calib_data": str,
    "out": str,
    "num_classes": int,
    "input_size": str,
    "precision": str,
    "target": str,
    "providers": str,
    "threads": int,
    "batch_size": int,
    "opset": int,
    "batch_sizes": str,
    "warmup": int,
    "iterations": int,
    "workspace_mib": int,
    "builder_optimization_level": int,
    "timing_cache": str,
    "hardware_compat": str,
    "opt_batch_size": int,
    "gates": str,
    "baseline": str,
    "calib_size": int,
    "seed": int,
    "calib_method": str,
    "percentile": (int, float),
    "exclude_layers": str,
    "calib_cache": str,
    "max_top1_drop": (int, float),
    "min_top1_agreement": (int, float),
    "max_excluded": int,
    "select_data": str,
    "select_size": int,
}

# Keys whose values are paths (relative ones are taken relative to the TOML file's folder).
PATH_KEYS = frozenset(
    {"weights", "val_data", "calib_data", "out", "gates", "baseline", "timing_cache", "calib_cache", "select_data"}
)


def load_toml_options(path: Path) -> dict[str, Any]:
    """Read a build TOML file into CLI option values; unknown keys and wrong types raise UserError.

    Relative paths in the file are taken relative to the file's folder.
    """
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist; check the --config path") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"config file {path} is not valid TOML ({exc}); fix the file") from None
    options: dict[str, Any] = {}
    for key, value in data.items():
        expected = _TOML_KEYS.get(key)
        if expected is None:
            valid = ", ".join(sorted(_TOML_KEYS))
            raise UserError(f"config file {path}: unknown key {key!r}; valid keys: {valid}")
        if isinstance(value, bool) or not isinstance(value, expected):
            name = expected.__name__ if isinstance(expected, type) else "/".join(t.__name__ for t in expected)
            raise UserError(f"config file {path}: key {key!r} must be a {name}, got {type(value).__name__}")
        if key in PATH_KEYS:
            value = str((Path(path).parent / value).resolve())
        options[key] = value
    return options
