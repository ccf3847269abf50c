"""What a gates file may say, and its strict parser.

A gates file is TOML, one table per engine name or glob, each key a threshold:

    ["onnxruntime-int8"]
    min_top1_agreement = 0.99
    max_top1_drop_points = 0.5

    ["*-fp16"]
    min_cosine = 0.9999
    max_p99_ms = { 1 = 5.0, 8 = 30.0 }

`parse_gates(text)` is the single pure entry point: text in, `Gates` out, or a `UserError` whose one-line
message names the offending table or key and what is valid. `load_gates(path)` reads a file through it;
`Gates.with_overrides(["ENGINE.KEY=VALUE", ...])` applies `--set` flags through the same validation.

When several tables match an engine, their keys are merged: an exact engine name beats a glob, and among
globs the later table wins. Per-batch keys merge by batch size.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import fnmatch
import json
import math
import re
import tomllib
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..files import read_user_text


class Bound(enum.StrEnum):
    """Which side of the threshold passes: MAX means value <= threshold, MIN means value >= threshold."""

    MAX = "max"
    MIN = "min"


@dataclass(frozen=True)
class GateSpec:
    """One kind of gate: its key in the file, which side passes, the valid range of its threshold."""

    key: str
    bound: Bound
    per_batch: bool  # the file gives { batch_size = threshold, ... }
    low: float
    high: float
    low_inclusive: bool
    unit: str
    description: str

    def in_range(self, value: float) -> bool:
        above = value >= self.low if self.low_inclusive else value > self.low
        return above and value <= self.high

    def range_text(self) -> str:
        if math.isinf(self.high):
            return f"{'>=' if self.low_inclusive else '>'} {self.low:g}"
        return f"between {self.low:g} and {self.high:g}"


ACCURACY_SPECS: tuple[GateSpec, ...] = (
    GateSpec("max_top1_drop_points", Bound.MAX, False, -100.0, 100.0, True, " pts",
             "top-1 accuracy of the reference minus the engine's, in points (needs labelled data)"),
    GateSpec("min_top1_agreement", Bound.MIN, False, 0.0, 1.0, True, "",
             "fraction of samples whose top-1 class equals the reference's"),
    GateSpec("min_cosine", Bound.MIN, False, -1.0, 1.0, True, "",
             "lowest cosine similarity between the engine's and the reference's logits"),
    GateSpec("max_abs_diff", Bound.MAX, False, 0.0, math.inf, True, "",
             "largest absolute logit difference from the reference"),
)  # fmt: skip


def reference_key(key: str) -> str:
    """'min_top1_agreement' -> 'min_reference_top1_agreement': the same metric of the model's exact semantics."""
    bound, _, metric = key.partition("_")
    return f"{bound}_reference_{metric}"


# The same metrics of the model itself (its exact ONNX semantics, whatever the CPU; FP16/INT8 rows only).
REFERENCE_SPECS: tuple[GateSpec, ...] = tuple(
    dataclasses.replace(
        spec, key=reference_key(spec.key), description=f"{spec.description}, for the model under its exact ONNX semantics"
    )
    for spec in ACCURACY_SPECS
)

SPECS: tuple[GateSpec, ...] = (
    *ACCURACY_SPECS,
    *REFERENCE_SPECS,
    GateSpec("max_p99_ms", Bound.MAX, True, 0.0, math.inf, False, " ms",
             "99th-percentile latency per call, per batch size"),
    GateSpec("min_throughput_ips", Bound.MIN, True, 0.0, math.inf, False, " img/s",
             "images per second at the mean latency, per batch size"),
    GateSpec("max_latency_regression_pct", Bound.MAX, False, -100.0, math.inf, False, "%",
             "p50 latency increase over the --baseline report, in percent, at every batch size"),
)  # fmt: skip
SPEC_BY_KEY: dict[str, GateSpec] = {spec.key: spec for spec in SPECS}
VALID_KEYS = ", ".join(spec.key for spec in SPECS)

_BATCH_KEY = re.compile(r"[1-9][0-9]{0,5}")
_GLOB_CHARS = frozenset("*?[")
_EXAMPLE = '["*"] with min_top1_agreement = 0.99'


def table_label(pattern: str) -> str:
    """How a table is shown in messages: as it is written in TOML, escaped to stay on one line."""
    return f"[{json.dumps(pattern)}]"


@dataclass(frozen=True)
class Threshold:
    key: str
    batch_size: int | None  # set for per-batch keys
    value: float

    @property
    def spec(self) -> GateSpec:
        return SPEC_BY_KEY[self.key]

    @property
    def leaf(self) -> tuple[str, int | None]:
        return (self.key, self.batch_size)


@dataclass(frozen=True)
class EngineGates:
    """One table of the gates file: the thresholds for the engines whose names match `pattern`."""

    pattern: str
    thresholds: tuple[Threshold, ...]

    @property
    def is_glob(self) -> bool:
        return any(c in _GLOB_CHARS for c in self.pattern)

    def matches(self, engine: str) -> bool:
        return fnmatch.fnmatchcase(engine, self.pattern) if self.is_glob else engine == self.pattern

    def merged(self, other: EngineGates) -> EngineGates:
        """These thresholds with `other`'s on top (leaf by leaf: key, or key and batch size)."""
        leaves = {t.leaf: t for t in self.thresholds}
        leaves.update({t.leaf: t for t in other.thresholds})
        return EngineGates(self.pattern, _ordered(leaves.values()))


def _ordered(thresholds: Iterable[Threshold]) -> tuple[Threshold, ...]:
    order = {spec.key: i for i, spec in enumerate(SPECS)}
    return tuple(sorted(thresholds, key=lambda t: (order[t.key], t.batch_size or 0)))


@dataclass(frozen=True)
class AppliedThreshold:
    """A threshold as it applies to one engine, with the table it came from."""

    threshold: Threshold
    pattern: str


@dataclass(frozen=True)
class Gates:
    tables: tuple[EngineGates, ...]

    def for_engine(self, engine: str) -> tuple[AppliedThreshold, ...]:
        """The merged thresholds for `engine`: globs in file order, then its exact-name table on top."""
        matching = [t for t in self.tables if t.matches(engine)]
        leaves: dict[tuple[str, int | None], AppliedThreshold] = {}
        for table in sorted(matching, key=lambda t: not t.is_glob):  # stable: globs keep their order
            for threshold in table.thresholds:
                leaves[threshold.leaf] = AppliedThreshold(threshold, table.pattern)
        ordered = _ordered(a.threshold for a in leaves.values())
        return tuple(leaves[t.leaf] for t in ordered)

    def with_overrides(self, overrides: Iterable[str]) -> Gates:
        """Apply `--set ENGINE.KEY=VALUE` / `--set ENGINE.KEY.BATCH=VALUE` flags, validated like the file.

        A flag changes the value in the table of that exact name (glob or engine), adding the table if the
        file has none.
        """
        tables = list(self.tables)
        for text in overrides:
            patch = parse_override(text)
            index = next((i for i, t in enumerate(tables) if t.pattern == patch.pattern), None)
            if index is None:
                tables.append(patch)
            else:
                tables[index] = tables[index].merged(patch)
        return Gates(tuple(tables))


# -------------------------------------------------------------------------------------------- parsing


def parse_gates(text: str, source: str = "gates file") -> Gates:
    """Parse and strictly validate the text of a gates file. Raises UserError (one line) on any problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{source} is not valid TOML ({_one_line(str(exc))}); fix the file") from None
    tables = tuple(_parse_table(pattern, body, source) for pattern, body in data.items())
    if not tables:
        raise UserError(f"{source} defines no gates; add a table such as {_EXAMPLE}")
    return Gates(tables)


def load_gates(path: Path) -> Gates:
    label = f"gates file {path}"
    return parse_gates(read_user_text(path, label, "give the path of a gates .toml file"), source=label)


def parse_override(text: str) -> EngineGates:
    """`ENGINE.KEY=VALUE` or `ENGINE.KEY.BATCH=VALUE` (ENGINE may be a glob) -> a one-key table."""
    usage = (
        "expected ENGINE.KEY=VALUE or ENGINE.KEY.BATCH=VALUE, "
        "e.g. 'onnxruntime-int8.min_top1_agreement=0.995' or '*-fp16.max_p99_ms.8=30'"
    )
    where = f"--set {json.dumps(text)}"
    lhs, eq, rhs = text.partition("=")
    lhs = lhs.strip()
    if not eq or "." not in lhs:
        raise UserError(f"{where}: {usage}")
    head, _, last = lhs.rpartition(".")
    batch: str | None = None
    before = head.rpartition(".")[2]
    if _BATCH_KEY.fullmatch(last) and "." in head and before in SPEC_BY_KEY:
        (head, _, key), batch = head.rpartition("."), last
        if not SPEC_BY_KEY[key].per_batch:
            raise UserError(f"{where}: {key!r} is not per batch size; use {json.dumps(f'{head}.{key}=VALUE')}")
    else:
        key = last
    if not head:
        raise UserError(f"{where}: {usage}")
    try:
        parsed = tomllib.loads(f"value = {rhs.strip()}")
    except tomllib.TOMLDecodeError:
        raise UserError(
            f"{where}: the value {rhs.strip()!r} is not a number (or a TOML inline table for per-batch keys)"
        ) from None
    if set(parsed) != {"value"}:
        raise UserError(f"{where}: give one value after '='")
    value = parsed["value"] if batch is None else {batch: parsed["value"]}
    return _parse_table(head, {key: value}, where)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _check_pattern(pattern: str, source: str) -> None:
    label = table_label(pattern)
    if not pattern.strip():
        raise UserError(f'{source}: table {label} has an empty engine name; name an engine or a glob such as "*-int8"')
    if pattern != pattern.strip():
        raise UserError(f"{source}: table {label} has spaces around the engine name; remove them")
    if any(unicodedata.category(c) == "Cc" for c in pattern):
        raise UserError(f"{source}: table {label} has a control character in the engine name; remove it")


def _parse_table(pattern: str, body: Any, source: str) -> EngineGates:
    if not isinstance(body, dict):
        if pattern in SPEC_BY_KEY:
            raise UserError(
                f"{source}: key {pattern!r} is outside any engine table; put it under a table named after an engine "
                f'or glob, e.g. ["*"]'
            )
        raise UserError(
            f"{source}: top-level key {pattern!r} is not an engine table; write [{json.dumps(pattern)}] above its keys"
        )
    _check_pattern(pattern, source)
    where = f"{source}: table {table_label(pattern)}"
    if not body:
        raise UserError(f"{where} sets no gates; valid keys: {VALID_KEYS}")
    thresholds: list[Threshold] = []
    for key, value in body.items():
        spec = SPEC_BY_KEY.get(key)
        if spec is None:
            close = difflib.get_close_matches(key, SPEC_BY_KEY, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(f"{where}: unknown key {key!r}{hint}; valid keys: {VALID_KEYS}")
        if spec.per_batch:
            thresholds += _parse_per_batch(spec, value, f"{where}: key {key!r}")
        else:
            thresholds.append(Threshold(key, None, _parse_number(spec, value, f"{where}: key {key!r}")))
    return EngineGates(pattern, _ordered(thresholds))


def _parse_per_batch(spec: GateSpec, value: Any, where: str) -> list[Threshold]:
    example = "{ 1 = 5.0, 8 = 30.0 }"
    if not isinstance(value, dict):
        raise UserError(f"{where} must be a table of batch size = threshold, e.g. {example}; got {_type_name(value)}")
    if not value:
        raise UserError(f"{where} names no batch sizes; give e.g. {example}")
    out = []
    for batch, threshold in value.items():
        if not _BATCH_KEY.fullmatch(batch):
            raise UserError(f"{where}: batch size {batch!r} must be a whole number from 1 to 999999, e.g. {example}")
        out.append(Threshold(spec.key, int(batch), _parse_number(spec, threshold, f"{where} at batch size {batch}")))
    return out


def _parse_number(spec: GateSpec, value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UserError(f"{where} must be a number, got {_type_name(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise UserError(f"{where} must be a finite number, got {value}")
    if not spec.in_range(number):
        raise UserError(f"{where} must be {spec.range_text()}, got {value}")
    return number


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return f"a string ({json.dumps(value)[:40]})"
    return f"a {type(value).__name__}"
