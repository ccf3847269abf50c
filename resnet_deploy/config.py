"""Typed settings for a build: enums instead of strings, frozen dataclasses, TOML loading."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from .calibration.methods import CalibrationOptions
from .errors import UserError


class Precision(str, enum.Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"

    def __str__(self) -> str:
        return self.value


class Target(str, enum.Enum):
    """Who consumes a (quantized) model: the Q/DQ recipe depends on it."""

    ONNXRUNTIME = "onnxruntime"
    TENSORRT = "tensorrt"

    def __str__(self) -> str:
        return self.value


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
    calibration: CalibrationOptions = field(default_factory=CalibrationOptions)
    force: bool = False

    def __post_init__(self) -> None:
        reduced = [p for p in self.precisions if p is not Precision.FP32]
        if reduced and self.calib_data is None:
            names = ",".join(p.value for p in reduced)
            raise UserError(
                f"--precision {names} needs --calib-data: INT8 ranges and FP16's overflow check come from calibration images"
            )
        if Precision.INT8 not in self.precisions and self.targets != (Target.ONNXRUNTIME,):
            raise UserError("--target chooses the INT8 recipe; add int8 to --precision or drop --target")


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
    "calib_size": int,
    "seed": int,
    "calib_method": str,
    "percentile": (int, float),
    "exclude_layers": str,
    "calib_cache": str,
}
PATH_KEYS = frozenset({"weights", "val_data", "calib_data", "out", "calib_cache"})


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
