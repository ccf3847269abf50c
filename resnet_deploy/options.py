"""Leaf option types and parsers: `Setting` (one option declared once), text parsers, the shared enums and small options.

Nothing here knows a stage: the types are what several layers share (`Precision`, `Target`, the accuracy
target of a mixed-precision search, ...); `config.py` composes them into a build's settings.

A `Setting` is one option of an options type, declared once in the module that owns the type (its `SETTINGS`):
the CLI derives its flag from it (cli/options.py `settings_options`), config.py its TOML key, its type check
and whether it is a path, and the range check is the same for the flag, the key and the type's `__post_init__`.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

from .errors import UserError


class Precision(enum.StrEnum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


class Target(enum.StrEnum):
    """Who consumes a (quantized) model: the Q/DQ recipe depends on it."""

    ONNXRUNTIME = "onnxruntime"
    TENSORRT = "tensorrt"


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


@dataclass(frozen=True)
class Setting:
    """One setting, declared once: its flag (`--openvino-streams`), its TOML key (`openvino_streams`), its check.

    `kind` is the type of the value as given: int, float, str (text `parse` reads), Path (relative ones in a TOML
    file are taken relative to its folder) or bool (a flag). `parse(value, label)` checks a value and returns what
    the options type holds; `limits` is the (low, high) range of an int. `field` is the field of the options type
    it fills (default: `key`); `toml` False keeps it a flag only.
    """

    key: str
    kind: type
    help: str | None = None
    default: Any = None
    limits: tuple[int, int] | None = None
    parse: Callable[[Any, str], Any] | None = None
    field: str | None = None
    toml: bool = True

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    @property
    def toml_type(self) -> type | tuple[type, ...]:
        """The TOML value's type: a path or text is a string, a float may be written as a whole number."""
        return {Path: str, float: (int, float)}.get(self.kind, self.kind)

    def but(self, **changes: Any) -> Setting:
        """The same setting as one command shows it (another help text or default)."""
        return dataclasses.replace(self, **changes)

    def check(self, value: Any, label: str | None = None) -> Any:
        """The range check of the flag, the TOML key and the options type's `__post_init__` (None passes)."""
        if self.limits is not None and value is not None:
            low, high = self.limits
            if not low <= value <= high:
                raise UserError(f"{label or self.flag} must be between {low} and {high}, got {value}")
        return value

    def check_toml(self, value: Any, label: str) -> None:
        """A TOML value of the right type: in range, accepted by the parser, a string not empty."""
        if self.limits is not None:
            self.check(value, label)
        elif self.parse is not None:
            self.parse(value, label)
        elif isinstance(value, str) and (not value.strip() or "\0" in value):
            raise UserError(f"{label} must not be empty")

    def read(self, value: Any) -> Any:
        """What the options type holds for a flag's value: parsed and checked (None: not given; so is an empty path)."""
        if self.kind is bool:
            return bool(value)
        if value is None:
            return None
        if self.kind is Path:
            return Path(value) if value else None
        if self.parse is not None:
            return self.parse(value, self.flag)
        return float(value) if self.kind is float else self.check(value)


class Configurable:
    """An options type whose fields are filled by its `SETTINGS` (flags or TOML keys)."""

    SETTINGS: ClassVar[tuple[Setting, ...]] = ()

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> Self:
        """The options from flag values by key; a setting missing from `values` keeps the field's default."""
        return cls(**{s.field or s.key: s.read(values[s.key]) for s in cls.SETTINGS if s.key in values})

    def check_ranges(self) -> None:
        """Each field a setting with a range fills is within it (for `__post_init__`)."""
        for s in self.SETTINGS:
            if s.limits is not None:
                s.check(getattr(self, s.field or s.key))


def setting(settings: tuple[Setting, ...], key: str) -> Setting:
    """The setting called `key` among `settings`."""
    found = [s for s in settings if s.key == key]
    if len(found) != 1:
        raise KeyError(f"{len(found)} settings called {key!r}")
    return found[0]


NUM_CLASSES = Setting("num_classes", int, "Classifier outputs (default: from the weights).", limits=(1, 1_000_000))


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


def parse_word(text: str, option: str, valid: tuple[str, ...]) -> str:
    word = str(text).strip().lower()
    if word not in valid:
        raise UserError(f"{option}: unknown value {text!r}; valid values: {', '.join(valid)}")
    return word


@dataclass(frozen=True)
class BenchmarkOptions(Configurable):
    SETTINGS = (
        Setting("batch_sizes", str, "Batch sizes to benchmark.", "1,8", parse=parse_int_list),
        Setting("warmup", int, "Warm-up calls per batch size.", 10, limits=(0, 1_000_000)),
        Setting("iterations", int, "Timed calls per batch size.", 50, limits=(1, 1_000_000)),
    )

    batch_sizes: tuple[int, ...] = (1, 8)
    warmup: int = 10
    iterations: int = 50
    # Stop a batch size early once this many seconds were spent timing it (after >= 5 iterations).
    max_seconds: float = 30.0

    def __post_init__(self) -> None:
        self.check_ranges()
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise UserError("benchmark: --batch-sizes must be whole numbers >= 1")


def check_top1_drop(value: float, option: str = "--max-top1-drop") -> float:
    if not (math.isfinite(value) and 0 <= value <= 100):
        raise UserError(f"{option} is in points of top-1 (0..100), got {value}")
    return float(value)


def check_top1_agreement(value: float, option: str = "--min-top1-agreement") -> float:
    if not (math.isfinite(value) and 0 < value <= 1):
        raise UserError(f"{option} is a fraction in (0, 1] (e.g. 0.99), got {value}")
    return float(value)


@dataclass(frozen=True)
class AccuracyTarget(Configurable):
    """What an INT8 model must keep (`--max-top1-drop`, `--min-top1-agreement`), and how far the mixed-precision
    search may go to get there (`--max-excluded` nodes left in higher precision). Both limits may be given."""

    SETTINGS = (
        Setting(
            "max_top1_drop",
            float,
            "INT8 accuracy target: top-1 (on labels) may drop at most this many points; nodes are left in higher precision "
            "until it holds.",
            parse=check_top1_drop,
            field="max_top1_drop_points",
        ),
        Setting(
            "min_top1_agreement",
            float,
            "INT8 accuracy target: top-1 must agree with the FP32 model on this fraction of images (e.g. 0.99).",
            parse=check_top1_agreement,
        ),
        Setting("max_excluded", int, "Most nodes the search leaves in higher precision.", 8, limits=(0, 100_000)),
    )

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
        self.check_ranges()

    @property
    def needs_labels(self) -> bool:
        return self.max_top1_drop_points is not None

    def met(self, accuracy: Any) -> bool:
        """Whether an `Accuracy` (engines/accuracy.py) meets every limit given."""
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
class SelectionOptions(Configurable):
    """The images that measure layer sensitivity and choose the excluded nodes (never those that report).

    `data` (--select-data) names them; without it, `size` images are held out of --calib-data (at most
    half of it) and calibration draws from the rest. `size` (--select-size) caps --select-data too.
    """

    SETTINGS = (
        Setting(
            "select_data",
            Path,
            "Images that measure sensitivity and choose the nodes (default: held out of --calib-data).",
            field="data",
        ),
        Setting("select_size", int, "Images used from the selection data.", 256, limits=(1, 10_000_000), field="size"),
    )

    data: Path | None = None
    size: int = 256

    def __post_init__(self) -> None:
        self.check_ranges()
