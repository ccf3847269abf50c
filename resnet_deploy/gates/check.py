"""Gates applied to a report: one `GateResult` per gate and engine, gathered in a `GateReport`.

`GateReport.return_code` decides the exit code (0 all pass, 1 any fails); renderers only display it. A gate
whose metric is missing from the report fails with the reason; a table matching no engine fails too, so a
gate never silently stops applying when an engine disappears from a build.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .environment import environment_differences
from .spec import ACCURACY_SPECS, SPEC_BY_KEY, AppliedThreshold, Bound, Gates, GateSpec, Threshold, reference_key


@dataclass(frozen=True)
class GateResult:
    engine: str
    pattern: str  # the table the threshold came from
    key: str
    batch_size: int | None
    threshold: float
    value: float | None  # None: the metric is missing (see `reason`)
    reason: str | None = None  # why the value is missing
    detail: str | None = None  # context, e.g. the baseline and new p50

    @property
    def spec(self) -> GateSpec:
        return SPEC_BY_KEY[self.key]

    @property
    def name(self) -> str:
        return self.key if self.batch_size is None else f"{self.key}[batch={self.batch_size}]"

    @property
    def passed(self) -> bool:
        if self.value is None or not math.isfinite(self.value):
            return False
        return self.value <= self.threshold if self.spec.bound is Bound.MAX else self.value >= self.threshold

    def as_dict(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "table": self.pattern,
            "gate": self.name,
            "key": self.key,
            "batch_size": self.batch_size,
            "bound": self.spec.bound.value,
            "threshold": self.threshold,
            "value": self.value,
            "unit": self.spec.unit.strip(),
            "passed": self.passed,
            "reason": self.reason,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class GateReport:
    """Everything `resnet-deploy gate` found. `return_code` is the exit code; the CLI only renders this."""

    results: tuple[GateResult, ...]
    unmatched: tuple[str, ...]  # table names/globs that match no engine in the report (each is a failure)
    engines: tuple[str, ...]  # engines in the report
    ungated: tuple[str, ...]  # engines no table applies to
    warnings: tuple[str, ...]  # e.g. a baseline from another machine
    report: str
    baseline: str | None = None

    @property
    def failed(self) -> tuple[GateResult, ...]:
        return tuple(r for r in self.results if not r.passed)

    @property
    def failure_count(self) -> int:
        return len(self.failed) + len(self.unmatched)

    @property
    def passed_count(self) -> int:
        return len(self.results) - len(self.failed)

    @property
    def return_code(self) -> int:
        return 1 if self.failure_count else 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.return_code == 0,
            "report": self.report,
            "baseline": self.baseline,
            "results": [r.as_dict() for r in self.results],
            "unmatched_tables": list(self.unmatched),
            "engines": list(self.engines),
            "ungated_engines": list(self.ungated),
            "warnings": list(self.warnings),
        }


def evaluate(
    gates: Gates,
    report: dict[str, Any],
    baseline: dict[str, Any] | None = None,
    *,
    report_label: str = "report",
    baseline_label: str | None = None,
) -> GateReport:
    """Apply `gates` to a report dict (as written to / read back from report.json)."""
    engines = report["engines"]
    names = tuple(e["name"] for e in engines)
    results: list[GateResult] = []
    ungated = []
    for engine in engines:
        applied = gates.for_engine(engine["name"])
        if not applied:
            ungated.append(engine["name"])
        for item in applied:
            results += _check(item, engine, report, baseline)
    unmatched = tuple(t.pattern for t in gates.tables if not any(t.matches(n) for n in names))
    warnings = environment_differences(baseline, report) if baseline is not None else []
    return GateReport(
        results=tuple(results),
        unmatched=unmatched,
        engines=names,
        ungated=tuple(ungated),
        warnings=tuple(warnings),
        report=report_label,
        baseline=baseline_label,
    )


# ------------------------------------------------------------------------------------ measurements


def _result(item: AppliedThreshold, engine: dict[str, Any], value: Any, reason: str | None = None, **kw: Any) -> GateResult:
    t: Threshold = item.threshold
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)):
        value, reason = None, f"the report holds {value!r}, not a finite number"
    return GateResult(engine["name"], item.pattern, t.key, kw.pop("batch_size", t.batch_size), t.value, value, reason, **kw)


def _check(item: AppliedThreshold, engine: dict[str, Any], report: dict[str, Any], baseline: dict[str, Any] | None):
    key = item.threshold.key
    if engine.get("error"):
        return [_result(item, engine, None, f"the engine could not be built or run: {engine['error']}")]
    if key == "max_latency_regression_pct":
        return _regressions(item, engine, baseline)
    if key in ("max_p99_ms", "min_throughput_ips"):
        return [_latency_gate(item, engine)]
    return [_accuracy_gate(item, engine, report)]


_ACCURACY_FIELD = {
    "max_top1_drop_points": "top1_drop_points",
    "min_top1_agreement": "top1_agreement",
    "min_cosine": "cosine_min",
    "max_abs_diff": "max_abs_diff",
}
# the model's exact accuracy (reference_accuracy), not the engine's: key -> the engine's key of the same metric
REFERENCE_OF = {reference_key(spec.key): spec.key for spec in ACCURACY_SPECS}


def _accuracy_gate(item: AppliedThreshold, engine: dict[str, Any], report: dict[str, Any]) -> GateResult:
    key = item.threshold.key
    if key in REFERENCE_OF:
        accuracy = engine.get("reference_accuracy")
        if accuracy is None:
            why = "it is FP32" if engine.get("precision") == "fp32" else "it was not validated"
            return _result(
                item, engine, None, f"the report has no reference accuracy for this engine ({why}): the exact-semantics "
                "accuracy is measured for FP16 and INT8 models"
            )  # fmt: skip
        key = REFERENCE_OF[key]
    else:
        accuracy = engine.get("accuracy")
    if accuracy is None:
        return _result(item, engine, None, "the report has no accuracy for this engine (it was not validated)")
    field = _ACCURACY_FIELD[key]
    value = accuracy.get(field)
    if value is not None:
        return _result(item, engine, value)
    if field == "top1_drop_points":
        labelled = report.get("data", {}).get("val", {}).get("labels")
        why = "the validation data has no labels" if labelled is False else "the report has no top1_drop_points"
        return _result(item, engine, None, f"{why}: top-1 drop needs labelled --val-data (class subfolders)")
    if accuracy.get("nonfinite_outputs"):
        return _result(item, engine, None, f"the engine produced {accuracy['nonfinite_outputs']} NaN/Inf outputs")
    return _result(item, engine, None, f"the report has no {field} for this engine")


def _latency_row(engine: dict[str, Any], batch_size: int) -> dict[str, Any] | None:
    return next((row for row in engine.get("latency", []) if row["batch_size"] == batch_size), None)


def _batch_list(engine: dict[str, Any]) -> str:
    return ", ".join(str(row["batch_size"]) for row in engine.get("latency", [])) or "none"


def _latency_gate(item: AppliedThreshold, engine: dict[str, Any]) -> GateResult:
    batch = item.threshold.batch_size
    row = _latency_row(engine, batch)
    if row is None:
        return _result(
            item, engine, None, f"no latency was measured at batch size {batch} (measured: {_batch_list(engine)}); "
            f"add it to --batch-sizes"
        )  # fmt: skip
    field = "p99_ms" if item.threshold.key == "max_p99_ms" else "throughput_ips"
    value = row.get(field)
    return _result(item, engine, value, None if value is not None else f"the report has no {field} at batch size {batch}")


def _regressions(item: AppliedThreshold, engine: dict[str, Any], baseline: dict[str, Any] | None) -> list[GateResult]:
    """p50 change against the baseline's engine of the same name, at every batch size the report measured."""
    if baseline is None:
        return [_result(item, engine, None, "no baseline report was given (--baseline OLD.json)")]
    rows = engine.get("latency", [])
    if not rows:
        return [_result(item, engine, None, "the report has no latency for this engine")]
    old_engine = next((e for e in baseline["engines"] if e["name"] == engine["name"]), None)
    if old_engine is None:
        names = ", ".join(e["name"] for e in baseline["engines"]) or "none"
        return [_result(item, engine, None, f"the baseline has no engine {engine['name']!r} (it has: {names})")]
    out = []
    for row in rows:
        batch = row["batch_size"]
        old = _latency_row(old_engine, batch)
        new_p50, old_p50 = row.get("p50_ms"), None if old is None else old.get("p50_ms")
        if old_p50 is None or new_p50 is None or old_p50 <= 0:
            missing = "the baseline has no p50 latency" if new_p50 is not None else "the report has no p50 latency"
            out.append(_result(item, engine, None, f"{missing} at batch size {batch}", batch_size=batch))
            continue
        change = (new_p50 - old_p50) / old_p50 * 100.0
        detail = f"p50 {old_p50:.4g} ms -> {new_p50:.4g} ms"
        out.append(_result(item, engine, change, batch_size=batch, detail=detail))
    return out
