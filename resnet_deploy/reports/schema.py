"""Reading a report.json (and a layers.json) back: the structure gates, compare, Markdown and HTML rely on, checked.

A file that does not have it is a UserError naming the file and the JSON path of the bad value.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..files import read_user_text
from .report import SCHEMA

_LATENCY_NUMBERS = ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "mean_ms", "throughput_ips")
_ACCURACY_NUMBERS = ("top1_agreement", "top5_agreement", "max_abs_diff", "cosine_min", "top1", "top1_ref", "top1_drop_points")


class _Shape:
    """Checks one report's structure; errors name the file and the JSON path of the bad value."""

    def __init__(self, label: str) -> None:
        self.label = label

    def fail(self, where: str, problem: str) -> UserError:
        return UserError(f"{self.label}: {where} {problem}; give a report.json written by resnet-deploy build")

    def dict(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, f"must be an object, got {type(value).__name__}")
        return value

    def list(self, value: Any, where: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(where, f"must be a list, got {type(value).__name__}")
        return value

    def number(self, value: Any, where: str) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise self.fail(where, f"must be a number or null, got {type(value).__name__}")

    def latency(self, rows: Any, where: str) -> None:
        seen = set()
        for i, row in enumerate(self.list(rows, where)):
            row = self.dict(row, f"{where}[{i}]")
            batch = row.get("batch_size")
            if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
                raise self.fail(f"{where}[{i}].batch_size", f"must be a whole number >= 1, got {batch!r}")
            if batch in seen:
                raise self.fail(f"{where}[{i}]", f"repeats batch size {batch}")
            seen.add(batch)
            for key in _LATENCY_NUMBERS:
                self.number(row.get(key), f"{where}[{i}].{key}")
            for j, sample in enumerate(self.list(row.get("samples_ms", []), f"{where}[{i}].samples_ms")):
                if isinstance(sample, bool) or not isinstance(sample, int | float) or not math.isfinite(sample):
                    raise self.fail(f"{where}[{i}].samples_ms[{j}]", "must be a finite number")

    def report(self, data: Any) -> dict[str, Any]:
        data = self.dict(data, "the top level")
        if data.get("schema") != SCHEMA:
            raise UserError(
                f"{self.label} is not a resnet-deploy report (schema {data.get('schema')!r}, expected {SCHEMA!r}); "
                "give the report.json written by resnet-deploy build"
            )
        for key in ("model", "reference"):
            self.dict(data.get(key), key)
        for key in ("host", "versions", "stages", "data"):
            self.dict(data.get(key, {}), key)
        if data["model"].get("class_names") is not None:
            self.strings(data["model"]["class_names"], "model.class_names")
        self.latency(data["reference"].get("latency", []), "reference.latency")
        self.per_class(data["reference"].get("per_class"), "reference.per_class")
        names = set()
        for i, engine in enumerate(self.list(data.get("engines"), "engines")):
            engine = self.dict(engine, f"engines[{i}]")
            name = engine.get("name")
            if not isinstance(name, str) or not name:
                raise self.fail(f"engines[{i}].name", "must be a non-empty string")
            if name in names:
                raise self.fail(f"engines[{i}].name", f"repeats engine {name!r}")
            names.add(name)
            for field_name in ("accuracy", "reference_accuracy"):
                if engine.get(field_name) is not None:
                    accuracy = self.dict(engine[field_name], f"engines[{i}].{field_name}")
                    for key in _ACCURACY_NUMBERS:
                        self.number(accuracy.get(key), f"engines[{i}].{field_name}.{key}")
                    self.per_class(accuracy.get("per_class"), f"engines[{i}].{field_name}.per_class")
            if not isinstance(engine.get("kernel_loss"), str | None):
                raise self.fail(f"engines[{i}].kernel_loss", "must be a string or null")
            self.latency(engine.get("latency", []), f"engines[{i}].latency")
            if engine.get("quantization") is not None:
                quantization = self.dict(engine["quantization"], f"engines[{i}].quantization")
                if quantization.get("mixed_precision") is not None:
                    self.mixed_precision(quantization["mixed_precision"], f"engines[{i}].quantization.mixed_precision")
        if data.get("gates") is not None:
            self.gates(data["gates"])
        if data.get("serving") is not None:
            self.serving(data["serving"])
        return data

    def serving(self, serving: Any) -> None:
        """What report.md / report.html read of `resnet-deploy serve-check`'s section."""
        serving = self.dict(serving, "serving")
        self.rows([serving.get("server")], "serving.server", ("binary", "origin"), ())
        self.strings(serving.get("failures"), "serving.failures")
        for i, model in enumerate(self.list(serving.get("models"), "serving.models")):
            where = f"serving.models[{i}]"
            self.rows([model], where, ("name", "engine", "backend"), ())
            self.rows([model.get("agreement")], f"{where}.agreement", (), ("images", "top1_agreement", "tolerance", "?",
                      "max_abs_diff"), ("passed",))  # fmt: skip
            levels = ("concurrency", "requests", "seconds", "?", "throughput_ips", "p50_ms", "p90_ms", "p99_ms", "mean_ms")
            self.rows(model.get("levels"), f"{where}.levels", (), levels)
            for j, level in enumerate(model["levels"]):
                server = ("requests", "inferences", "executions", "?", "queue_us", "compute_us", "compute_infer_us", "mean_batch")
                self.rows([level.get("server")], f"{where}.levels[{j}].server", (), server)

    def rows(self, value: Any, where: str, strings: tuple[str, ...], numbers: tuple[str, ...], flags: tuple[str, ...] = ()):
        """Each item of a list: an object whose `strings` keys are strings, `numbers` numbers (null allowed for the
        keys after a '?' entry), `flags` booleans."""
        optional = numbers[numbers.index("?") + 1 :] if "?" in numbers else ()
        for i, row in enumerate(self.list(value, where)):
            row = self.dict(row, f"{where}[{i}]")
            for key in strings:
                if not isinstance(row.get(key), str):
                    raise self.fail(f"{where}[{i}].{key}", "must be a string")
            for key in (k for k in numbers if k != "?"):
                self.number(row.get(key), f"{where}[{i}].{key}")
                if key not in optional and row.get(key) is None:
                    raise self.fail(f"{where}[{i}].{key}", "must be a number")
            for key in flags:
                if not isinstance(row.get(key), bool):
                    raise self.fail(f"{where}[{i}].{key}", "must be true or false")
            if "excluded" in row:
                self.strings(row["excluded"], f"{where}[{i}].excluded")

    def mixed_precision(self, search: Any, where: str) -> None:
        """What report.md / report.html read of a mixed-precision search (quantization.mixed_precision)."""
        search = self.dict(search, where)
        self.rows([search], where, ("status", "high_precision"), (), ("met",))
        self.rows([search.get("target")], f"{where}.target", ("description",), ("max_excluded",))
        self.rows([search.get("selection")], f"{where}.selection", ("source", "origin"), ("samples",))
        self.strings(search.get("excluded"), f"{where}.excluded")
        self.rows(search.get("steps"), f"{where}.steps", ("phase",), ("top1_agreement", "?", "top1_drop_points"), ("met",))
        self.rows(search.get("sensitivity", []), f"{where}.sensitivity", ("node",), ("?", "sqnr_db"))
        costs = ("batch_size", "before_p50_ms", "after_p50_ms", "cost_ms", "?", "cost_pct")
        self.rows(search.get("latency_cost") or [], f"{where}.latency_cost", ("engine",), costs)
        if search.get("on_val") is not None:
            self.rows([search["on_val"]], f"{where}.on_val", (), ("top1_agreement", "?", "top1_drop_points"), ("met",))

    def counts(self, value: Any, where: str) -> list[int]:
        values = self.list(value, where)
        for i, item in enumerate(values):
            if isinstance(item, bool) or not isinstance(item, int) or item < 0:
                raise self.fail(f"{where}[{i}]", "must be a whole number >= 0")
        return values

    def per_class(self, value: Any, where: str) -> None:
        """Per-class counts (engines.accuracy.ClassAccuracy; the reference's: samples, correct, confusions)."""
        if value is None:
            return
        value = self.dict(value, where)
        classes = len(self.counts(value.get("samples"), f"{where}.samples"))
        for key in ("correct", "correct_ref"):
            if key in value and len(self.counts(value[key], f"{where}.{key}")) != classes:
                raise self.fail(f"{where}.{key}", f"must have one count per class ({classes})")
        for key in ("confusions", "confusions_ref"):
            for i, row in enumerate(self.list(value.get(key, []), f"{where}.{key}")):
                if len(self.counts(row, f"{where}.{key}[{i}]")) != 3 or max(row[:2]) >= classes:
                    raise self.fail(f"{where}.{key}[{i}]", "must be [true class, predicted class, images]")

    def strings(self, value: Any, where: str) -> None:
        for i, item in enumerate(self.list(value, where)):
            if not isinstance(item, str):
                raise self.fail(f"{where}[{i}]", "must be a string")

    def gates(self, gates: Any) -> None:
        """The gate results a build with --gates stored (rendered again by `resnet-deploy report`)."""
        gates = self.dict(gates, "gates")
        for key in ("unmatched_tables", "engines", "ungated_engines", "warnings"):
            self.strings(gates.get(key), f"gates.{key}")
        if not isinstance(gates.get("report"), str) or not isinstance(gates.get("baseline"), str | None):
            raise self.fail("gates.report/baseline", "must be strings")
        for i, result in enumerate(self.list(gates.get("results"), "gates.results")):
            where = f"gates.results[{i}]"
            result = self.dict(result, where)
            for key in ("engine", "table", "gate", "unit"):
                if not isinstance(result.get(key), str):
                    raise self.fail(f"{where}.{key}", "must be a string")
            if result.get("bound") not in ("max", "min") or not isinstance(result.get("passed"), bool):
                raise self.fail(where, "must have bound 'max' or 'min' and a boolean passed")
            if result.get("threshold") is None:
                raise self.fail(f"{where}.threshold", "must be a number")
            for key in ("threshold", "value"):
                self.number(result.get(key), f"{where}.{key}")


def read_report(path: Path, what: str = "report") -> dict[str, Any]:
    """A report.json read back and checked for the structure gates, compare and HTML rely on."""
    path = Path(path)
    label = f"{what} {path}"
    text = read_user_text(path, label, "give the report.json written by resnet-deploy build")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{label} is not valid JSON ({exc}); give the report.json written by resnet-deploy build") from None
    return _Shape(label).report(data)


LAYERS_SCHEMA = "resnet-deploy/layers/v1"


def read_layers(path: Path) -> dict[str, Any]:
    """A layers.json (`resnet-deploy layers`) read back and checked for what report.html draws from it."""
    label = f"layers file {path}"
    fix = "give the layers.json written by resnet-deploy layers"
    text = read_user_text(Path(path), label, fix)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{label} is not valid JSON ({exc}); {fix}") from None
    shape = _Shape(label)
    if not isinstance(data, dict) or data.get("schema") != LAYERS_SCHEMA:
        raise UserError(f"{label} is not a resnet-deploy layers file (expected schema {LAYERS_SCHEMA!r}); {fix}")
    shape.rows([data], "the top level", ("target",), ())
    shape.rows([data.get("model")], "model", ("arch",), ())
    shape.rows([data.get("selection")], "selection", ("origin",), ("samples",))
    shape.rows([data.get("fully_quantized")], "fully_quantized", (), ("top1_agreement",))
    numbers = ("?", "sqnr_db", "top1_agreement_drop_points", "top1_agreement_unquantized")
    shape.rows(data.get("nodes"), "nodes", ("node", "op_type"), numbers)
    return data
