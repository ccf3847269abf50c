"""Typed settings for a build: enums instead of strings, frozen dataclasses, TOML loading."""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

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


MAX_BATCH = 4096  # the largest batch an exported model accepts (its dynamic batch axis)

# Ranges of the numeric settings, whether given as flags or as config keys.
LIMITS: dict[str, tuple[int, int]] = {
    "num_classes": (1, 1_000_000),
    "threads": (1, 1024),
    "batch_size": (1, MAX_BATCH),
    "opset": (18, 1000),  # the dynamo exporter's minimum; the export stage checks the exporter's maximum
    "warmup": (0, 1_000_000),
    "iterations": (1, 1_000_000),
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
    force: bool = False


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
    "threads": (int, None),
    "batch_size": (int, None),
    "opset": (int, None),
    "batch_sizes": (str, parse_int_list),
    "warmup": (int, None),
    "iterations": (int, None),
}
PATH_KEYS = frozenset({"weights", "val_data", "calib_data", "out"})


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
        if isinstance(value, bool) or not isinstance(value, expected):
            kind = "a whole number" if expected is int else "a string"
            raise UserError(f"{label} must be {kind}, got {type(value).__name__} {value!r}"[:300])
        if key in LIMITS:
            check_range(key, value, label)
        elif parse is not None:
            parse(value, label)
        elif not value.strip() or "\0" in value:
            raise UserError(f"{label} must not be empty")
        if key in PATH_KEYS:
            value = os.path.abspath(Path(path).parent / value)
        options[key] = value
    return options
