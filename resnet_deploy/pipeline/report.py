"""The build report: `report.json` (a public interface, schema resnet-deploy/report/v1) and `report.md`.

`Report.return_code` decides the exit code of a build; the CLI only renders it.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..artifacts import read_user_text, write_json_atomic, write_text_atomic
from ..engines.naming import int8_compute, precision_label  # noqa: F401 - int8_compute: re-exported for cli.py
from ..errors import UserError
from ..isa import host_isa
from .benchmark import Latency
from .validate import Accuracy

if TYPE_CHECKING:
    from ..gates import GateReport

SCHEMA = "resnet-deploy/report/v1"


@dataclass
class EngineResult:
    name: str
    backend: str
    precision: str
    target: str | None
    path: str | None
    accuracy: Accuracy | None = None
    latency: list[Latency] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # why the engine could not be built or run (then it has no numbers)
    # INT8: method, samples, quantized_nodes, excluded_nodes, tool, ...; FP16: AutoCast's details; FP32: None
    quantization: dict[str, Any] | None = None
    # FP16/INT8: the accuracy of the model file under its exact ONNX semantics (kernels.py), whatever the CPU
    reference_accuracy: Accuracy | None = None
    kernel_loss: str | None = None  # why the engine, as run here, agrees markedly less than its model (kernels.py)

    @property
    def failed(self) -> bool:
        return self.accuracy is not None and not self.accuracy.passed

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "backend": self.backend,
            "precision": self.precision,
            "target": self.target,
            "path": self.path,
            "accuracy": None if self.accuracy is None else self.accuracy.as_dict(),
            "latency": [lat.as_dict() for lat in self.latency],
            "quantization": self.quantization,
            "reference_accuracy": None if self.reference_accuracy is None else self.reference_accuracy.as_dict(),
            "kernel_loss": self.kernel_loss,
            "details": self.details,
            "error": self.error,
            "passed": not self.failed,
        }


def target_failure(name: str, path: str | None, quantization: dict[str, Any] | None) -> str | None:
    """Why an engine of a mixed-precision INT8 model fails its accuracy target (None when it does not)."""
    search = (quantization or {}).get("mixed_precision")
    if not search:
        return None
    target = search["target"]
    if not search["met"]:
        model = Path(path).name if path else "the model"
        return (
            f"{name}: {target['description']} not met on the selection images with up to {target['max_excluded']} "
            f"node(s) in higher precision; {model} is the best effort found ({len(search['excluded'])} node(s) kept)"
        )
    on_val = search.get("on_val")
    if on_val and not on_val["met"]:
        drop = "" if on_val.get("top1_drop_points") is None else f", top-1 drop {on_val['top1_drop_points']:+.2f} points"
        return (
            f"{name}: {target['description']} met on the selection images but missed on --val-data "
            f"(top-1 agreement {on_val['top1_agreement'] * 100:.2f}%{drop})"
        )
    return None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu_name() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - a broken CUDA setup means "no GPU" for the report
        pass
    return None


def _tensorrt_version() -> str | None:
    """The importable TensorRT's version (the pip distributions are named per CUDA version), or None."""
    try:
        import tensorrt

        return str(tensorrt.__version__)
    except Exception:  # noqa: BLE001 - not installed, or its libraries are missing
        return None


def environment(threads: int | None) -> dict[str, Any]:
    """Host and versions: what a latency number needs to be compared like with like (and an INT8 number: the ISA)."""
    import torch

    return {
        "host": {
            "cpu": _cpu_model(),
            "isa": host_isa().as_dict(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "threads": threads or torch.get_num_threads(),
            "gpu": _gpu_name(),
            "os": platform.platform(),
        },
        "versions": {
            "resnet_deploy": _version("resnet-deploy"),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": _version("torchvision"),
            "timm": _version("timm"),
            "onnx": _version("onnx"),
            "onnxruntime": _version("onnxruntime-gpu") or _version("onnxruntime"),
            "openvino": _version("openvino"),
            "polygraphy": _version("polygraphy"),
            "tensorrt": _tensorrt_version(),
            "numpy": _version("numpy"),
        },
    }


@dataclass
class Report:
    model: dict[str, Any]
    fold: dict[str, Any]
    export: dict[str, Any]
    reference: dict[str, Any]
    engines: list[EngineResult]
    data: dict[str, Any]
    environment: dict[str, Any]
    stages: dict[str, float] = field(default_factory=dict)  # wall seconds per stage
    notes: list[str] = field(default_factory=list)
    gates: GateReport | None = None  # set when the build ran with --gates
    warnings: list[str] = field(default_factory=list)  # things the user should look at (the CLI prints them)
    calibration: dict[str, Any] | None = None  # method, samples, data, cache reuse, calib.json path
    broken_models: list[str] = field(default_factory=list)  # reduced-precision models below the sanity floor (kernels.py)
    gated: bool = False  # the build has gates (--gates/--set): they, not the sanity floor, decide on accuracy

    @property
    def failures(self) -> list[str]:
        """What makes the build exit 1. A model below the sanity floor fails it unless gates decide (--gates)."""
        nonfinite = [f"{e.name}: {e.accuracy.nonfinite_outputs} outputs are NaN/Inf" for e in self.engines if e.failed]
        missed = [target_failure(e.name, e.path, e.quantization) for e in self.engines if e.error is None]
        return nonfinite + [m for m in missed if m] + ([] if self.gated else self.broken_models)

    @property
    def return_code(self) -> int:
        """1 when a stage failed its check or a gate failed, else 0."""
        gates_code = self.gates.return_code if self.gates is not None else 0
        return max(1 if self.failures else 0, gates_code)

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "model": self.model,
            "fold": self.fold,
            "export": self.export,
            "reference": self.reference,
            "engines": [e.as_dict() for e in self.engines],
            "data": self.data,
            "calibration": self.calibration,
            "stages": self.stages,
            "notes": self.notes,
            "warnings": self.warnings + (self.broken_models if self.gated else []),
            "failures": self.failures,
            **self.environment,
            **({"gates": self.gates.as_dict()} if self.gates is not None else {}),
        }

    def write(self, folder: Path) -> None:
        from .html import render_html

        data = self.as_dict()
        write_json_atomic(Path(folder) / "report.json", data)
        write_text_atomic(Path(folder) / "report.md", to_markdown(data))
        write_text_atomic(Path(folder) / "report.html", render_html(data))


# ------------------------------------------------------------------------------------ reading back

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
        """Per-class counts (validate.ClassAccuracy; the reference's: samples, correct, confusions)."""
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


_HOST_KEYS = ("cpu", "machine", "cpu_count", "threads", "gpu")


def _isa_summary(host: dict[str, Any]) -> str:
    isa = host.get("isa")
    return str(isa.get("summary", "unknown")) if isinstance(isa, dict) else "unknown"


_VERSION_KEYS = ("onnxruntime", "openvino", "torch", "onnx", "tensorrt")


def environment_differences(old: dict[str, Any], new: dict[str, Any], old_label: str = "baseline") -> list[str]:
    """Why latency numbers of two reports may not compare like with like (empty when they do)."""
    out = []
    old_host, new_host = old.get("host", {}), new.get("host", {})
    host = [f"{k} {old_host.get(k)!r} vs {new_host.get(k)!r}" for k in _HOST_KEYS if old_host.get(k) != new_host.get(k)]
    old_isa, new_isa = _isa_summary(old_host), _isa_summary(new_host)
    if old_isa != new_isa:
        host.append(f"INT8 instruction sets {old_isa!r} vs {new_isa!r}")
    if host:
        out.append(f"{old_label} is from another machine or setting (" + "; ".join(host) + "): latency is not like with like")
    old_kind, new_kind = (h.get("isa", {}).get("kind") if isinstance(h.get("isa"), dict) else None for h in (old_host, new_host))
    if old_kind != new_kind:
        out.append(
            f"{old_label} ran on a CPU of another INT8 kind ({old_kind or 'unknown'} vs {new_kind or 'unknown'}): INT8 accuracy "
            "as run differs between them (x86 without VNNI saturates U8S8 sums); compare the reference_accuracy of the models"
        )
    old_v, new_v = old.get("versions", {}), new.get("versions", {})
    versions = [f"{k} {old_v.get(k)} vs {new_v.get(k)}" for k in _VERSION_KEYS if old_v.get(k) != new_v.get(k)]
    if versions:
        out.append(f"{old_label} ran other software versions (" + "; ".join(versions) + ")")
    return out


# ------------------------------------------------------------------------------------------ markdown


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.2f}%"


def _num(value: float | None, fmt: str = ".3g") -> str:
    return "n/a" if value is None else format(value, fmt)


def _latency_at(latency: list[dict[str, Any]], batch_size: int) -> dict[str, Any] | None:
    return next((row for row in latency if row["batch_size"] == batch_size), None)


def _ms_cell(row: dict[str, Any], stat: str) -> str:
    cell = f"{row[f'{stat}_ms']:.2f}"
    gpu = row.get(f"gpu_{stat}_ms")
    return cell if gpu is None else f"{cell} ({gpu:.2f})"


WORST_CLASSES = 10  # rows of the per-class table
TOP_CONFUSIONS = 10


def model_lines(model: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, text) facts about where the model came from: the weights used, preprocessing, class names."""
    from ..data import Preprocess

    lines = []
    checkpoint = model.get("checkpoint") or {}
    if checkpoint.get("description"):
        lines.append(("weights", str(checkpoint["description"])))
    try:
        text = Preprocess.from_dict(model["preprocess"]).describe()
    except (KeyError, TypeError, ValueError, UserError):
        text = str(model.get("preprocess"))
    sources = model.get("preprocess_source")
    if isinstance(sources, dict) and sources:
        grouped: dict[str, list[str]] = {}
        for name, source in sources.items():
            grouped.setdefault(str(source), []).append(str(name))
        text += " (" + "; ".join(f"{', '.join(names)}: {source}" for source, names in grouped.items()) + ")"
    lines.append(("preprocessing", text))
    if model.get("class_names"):
        lines.append(("class names", f"{len(model['class_names'])}, from {model.get('class_names_source') or '?'}"))
    return lines


def class_label(report: dict[str, Any], index: int) -> str:
    names = report["model"].get("class_names")
    return f"{names[index]} ({index})" if names and index < len(names) else str(index)


def per_class_table(report: dict[str, Any], limit: int = WORST_CLASSES) -> tuple[list[str], list[list[str]]] | None:
    """The classes with the lowest top-1 (of the reference or of any engine): header and rows of plain text."""
    ref = report["reference"].get("per_class")
    if not ref:
        return None
    samples, engines = ref["samples"], [e for e in report["engines"] if (e.get("accuracy") or {}).get("per_class")]
    columns = [ref["correct"], *(e["accuracy"]["per_class"]["correct"] for e in engines)]

    def top1(correct: list[int], c: int) -> float | None:
        return correct[c] / samples[c] if c < len(correct) else None

    def worst(c: int) -> tuple[float, float, int]:
        values = [v for v in (top1(col, c) for col in columns) if v is not None]
        return (min(values), top1(ref["correct"], c) or 0.0, c)

    shown = sorted((c for c, n in enumerate(samples) if n > 0), key=worst)[:limit]
    header = ["class", "images", f"{report['reference'].get('name', 'reference')} (reference)", *(e["name"] for e in engines)]
    rows = [[class_label(report, c), str(samples[c]), *(_pct(top1(col, c)) for col in columns)] for c in shown]
    return header, rows


def confusion_table(report: dict[str, Any], limit: int = TOP_CONFUSIONS) -> tuple[list[str], list[list[str]]] | None:
    """The reference's most frequent confusions: true class, predicted class, images, share of the class."""
    ref = report["reference"].get("per_class")
    if not ref or not ref.get("confusions"):
        return None
    samples = ref["samples"]
    rows = [
        [class_label(report, t), class_label(report, p), str(n), _pct(n / samples[t]) if samples[t] else "n/a"]
        for t, p, n in ref["confusions"][:limit]
    ]
    return ["true class", "predicted as", "images", "share of the class"], rows


def _markdown_row(cells: list[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"  # class names may hold a pipe


def _markdown_table(table: tuple[list[str], list[list[str]]]) -> list[str]:
    header, rows = table
    return [_markdown_row(header), "|" + "---|" * len(header), *map(_markdown_row, rows)]


def _classes_section(report: dict[str, Any]) -> list[str]:
    lines = []
    table = per_class_table(report)
    if table:
        lines += ["", f"## Per-class top-1 (the {len(table[1])} worst classes)", "", *_markdown_table(table)]
    confusions = confusion_table(report)
    if confusions:
        lines += ["", "## Most frequent confusions (reference)", "", *_markdown_table(confusions)]
    return lines


def to_markdown(report: dict[str, Any]) -> str:
    """A readable page from a report dict (works on a report.json read back from disk)."""
    model, fold, export = report["model"], report["fold"], report["export"]
    host = report.get("host", {})
    lines = [
        f"# resnet-deploy report: {model['arch']}",
        "",
        f"- weights sha256 `{model['weights_sha256'][:16]}…`, {model['num_classes']} classes, "
        f"input {'x'.join(map(str, model['input_shape']))}",
        *(f"- {label}: {text}" for label, text in model_lines(model)),
        f"- BN folding: {fold['folded']} folded, {fold['remaining_batchnorm']} remaining, "
        f"max abs diff {_num(fold.get('max_abs_diff'))}",
        f"- ONNX export: opset {export['opset']}, max abs diff vs PyTorch {_num(export.get('max_abs_diff'))}",
        f"- host: {host.get('cpu', '?')}, {host.get('threads', '?')} threads, GPU: {host.get('gpu') or 'none'}",
        f"- INT8 instruction sets: {_isa_summary(host)}"
        + (" (no VNNI: U8S8 sums saturate at 16 bits)" if (host.get("isa") or {}).get("u8s8_saturates") else ""),
        "",
        "## Accuracy against the PyTorch reference",
        "",
        "Reduced-precision models are also measured under their exact ONNX semantics (ONNX Runtime, graph "
        "optimizations off): the model's own top-1 agreement, whatever the CPU's INT8 instructions (`exact`).",
        "",
        "| engine | precision | target | top-1 agree | exact top-1 agree | top-5 agree | max abs diff | cosine min | top-1 "
        "| top-1 drop (pts) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    ref = report["reference"]
    lines.append(f"| {ref['name']} (reference) | fp32 | | 100% | | 100% | 0 | 1 | {_pct(ref.get('top1'))} | |")
    for engine in report["engines"]:
        acc, exact = engine.get("accuracy"), engine.get("reference_accuracy")
        if engine.get("error"):
            lines.append(f"| {engine['name']} | {engine['precision']} | {engine['target'] or ''} | {engine['error']} |||||||")
            continue
        if acc is None:
            continue
        drop = acc.get("top1_drop_points")
        lines.append(
            f"| {engine['name']} | {precision_label(engine)} | {engine['target'] or ''} | {_pct(acc['top1_agreement'])} | "
            f"{_pct(exact['top1_agreement']) if exact else ''} | "
            f"{_pct(acc['top5_agreement'])} | {_num(acc['max_abs_diff'])} | {_num(acc['cosine_min'], '.6f')} | "
            f"{_pct(acc.get('top1'))} | {_num(drop, '+.2f')} |"
            + ("" if engine.get("passed", True) else " **FAILED: NaN/Inf outputs**")
            + (" **kernel loss**" if engine.get("kernel_loss") else "")
        )
    losses = [e["kernel_loss"] for e in report["engines"] if e.get("kernel_loss")]
    if losses:
        lines += ["", "**The CPU's kernels, not the model, lose accuracy:**", ""] + [f"- {loss}" for loss in losses]
    lines += _classes_section(report)
    batch_sizes = sorted({row["batch_size"] for e in [ref, *report["engines"]] for row in e.get("latency", [])})
    if batch_sizes:
        lines += ["", "## Latency (ms) and throughput (images/s)", ""]
        header = "| engine | " + " | ".join(f"b{b} p50 | b{b} p99 | b{b} img/s" for b in batch_sizes) + " |"
        lines += [header, "|---|" + "---|" * (3 * len(batch_sizes))]
        for entry in [ref, *report["engines"]]:
            if not entry.get("latency"):
                continue
            cells = []
            for b in batch_sizes:
                row = _latency_at(entry["latency"], b)
                cells += (
                    ["n/a"] * 3 if row is None else [_ms_cell(row, "p50"), _ms_cell(row, "p99"), f"{row['throughput_ips']:.1f}"]
                )
            lines.append(f"| {entry['name']} | " + " | ".join(cells) + " |")
        if any(row.get("gpu_p50_ms") is not None for e in report["engines"] for row in e.get("latency", [])):
            lines += ["", "GPU engines: end-to-end time with host copies (GPU compute time alone in brackets)."]
    lines += _precision_section(report)
    lines += _mixed_precision_section(report)
    lines += _serving_section(report.get("serving"))
    if report.get("stages"):
        lines += ["", "## Stages (wall seconds)", ""]
        lines += [f"- {name}: {seconds:.1f}" for name, seconds in report["stages"].items()]
    for note in report.get("notes", []):
        lines.append(f"- note: {note}")
    for warning in report.get("warnings", []):
        lines.append(f"- **warning**: {warning}")
    if report.get("failures"):
        lines += ["", "## Failures", ""] + [f"- {f}" for f in report["failures"]]
    if report.get("gates"):
        from ..gates import render

        lines += ["", render.markdown(report["gates"]).rstrip("\n")]
    return "\n".join(lines) + "\n"


def _precision_section(report: dict[str, Any]) -> list[str]:
    """How each reduced-precision model was made: tool, calibration, what was quantized or kept in FP32."""
    rows = [e for e in report["engines"] if e.get("quantization")]
    if not rows:
        return []
    lines = ["", "## Reduced precision", ""]
    calibration = report.get("calibration") or {}
    if calibration:
        data = calibration.get("data") or {}
        reused = " (statistics reused from the cache)" if calibration.get("reused_cache") else ""
        lines += [
            f"Calibration: {calibration.get('samples')} images of {data.get('source', '?')}, method "
            f"{calibration.get('method')}{reused}; ranges in `calib.json`.",
            "",
        ]
    lines += [
        "| engine | tool | method | samples | nodes in INT8 / FP16 | kept in higher precision |",
        "|---|---|---|---|---|---|",
    ]
    for engine in rows:
        q = engine["quantization"]
        kept = q.get("excluded_nodes", []) if engine["precision"] == "int8" else q.get("fp32_nodes", [])
        method = q.get("method") or "max |x| only"  # FP16 reads the maxima, no range method
        if q.get("percentile") is not None:
            method = f"{method} {q['percentile']:g}"
        lines.append(
            f"| {engine['name']} | {q.get('tool', '')} | {method} | {q.get('samples', '')} | "
            f"{q.get('quantized_nodes', q.get('fp16_nodes', ''))} | {', '.join(kept) if kept else 'none'} |"
        )
    return lines


def _step_cells(step: dict[str, Any]) -> str:
    drop = step.get("top1_drop_points")
    return f"{_pct(step['top1_agreement'])} | {_num(drop, '+.2f')} | {'met' if step['met'] else 'missed'}"


def _mixed_precision_section(report: dict[str, Any]) -> list[str]:
    """Per engine of a searched INT8 model: target, data, steps, the nodes kept, the latency they cost."""
    rows = [e for e in report["engines"] if (e.get("quantization") or {}).get("mixed_precision") and not e.get("error")]
    if not rows:
        return []
    lines = ["", "## Mixed precision (accuracy target)"]
    for engine in rows:
        search = engine["quantization"]["mixed_precision"]
        selection, on_val = search["selection"], search.get("on_val")
        modules = {r["node"]: r.get("module") for r in search.get("sensitivity", [])}
        kept = [f"{n} ({modules[n]})" if modules.get(n) else n for n in search["excluded"]]
        status = "target met" if search["met"] else "**TARGET MISSED: best effort**"
        lines += [
            "",
            f"### {engine['name']}: {status}",
            "",
            f"- target: {search['target']['description']}, at most {search['target']['max_excluded']} nodes in higher "
            f"precision ({search['high_precision']})",
            f"- chosen on {selection['samples']} images ({selection['origin']}: {selection['source']}), disjoint from --val-data",
            f"- nodes in higher precision: {', '.join(kept) if kept else 'none'}",
        ]
        if on_val:
            lines.append(
                f"- on --val-data: top-1 agreement {_pct(on_val['top1_agreement'])}"
                + ("" if on_val.get("top1_drop_points") is None else f", top-1 drop {on_val['top1_drop_points']:+.2f} points")
                + f": {'met' if on_val['met'] else '**missed**'}"
            )
        for cost in search.get("latency_cost") or []:
            lines.append(
                f"- latency cost on {cost['engine']}, batch {cost['batch_size']}: {cost['before_p50_ms']:.3f} -> "
                f"{cost['after_p50_ms']:.3f} ms p50 ({cost['cost_ms']:+.3f} ms, {_num(cost.get('cost_pct'), '+.1f')}%)"
            )
        lines += [
            "",
            "| step | phase | nodes in higher precision | top-1 agreement | top-1 drop (pts) | target |",
            "|---|---|---|---|---|---|",
        ]
        for i, step in enumerate(search["steps"], 1):
            lines.append(f"| {i} | {step['phase']} | {len(step['excluded'])} | {_step_cells(step)} |")
    return lines


def _serving_section(serving: dict[str, Any] | None) -> list[str]:
    """`resnet-deploy serve-check`: agreement of the served logits, and latency and throughput per concurrency."""
    if not serving:
        return []
    server, client = serving["server"], serving.get("client", {})
    lines = [
        "",
        "## Serving (Triton)",
        "",
        f"- server: tritonserver {server.get('version') or '?'} ({server['origin']}: `{server['binary']}`); repository "
        f"`{serving.get('repository', '?')}`",
        f"- client: tritonclient {client.get('protocol', 'grpc')}, {client.get('images_per_request', 1)} image per request, "
        f"concurrency {client.get('concurrency')}, at most {client.get('requests_per_level')} requests and "
        f"{client.get('seconds_per_level')} s per level",
        "",
        "| model | engine | served vs in process: top-1 agree | max abs diff | concurrency | img/s | p50 ms | p90 ms | p99 ms "
        "| queue us | compute us | mean batch |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model in serving["models"]:
        a = model["agreement"]
        check = f"{_pct(a['top1_agreement'])}" + ("" if a["passed"] else " **FAILED**")
        for i, level in enumerate(model["levels"]):
            s = level["server"]
            first = [model["name"], model["engine"], check, _num(a.get("max_abs_diff"))] if i == 0 else ["", "", "", ""]
            cells = first + [
                str(level["concurrency"]), _num(level.get("throughput_ips"), ".1f"), _num(level.get("p50_ms"), ".2f"),
                _num(level.get("p90_ms"), ".2f"), _num(level.get("p99_ms"), ".2f"), _num(s.get("queue_us"), ".0f"),
                _num(s.get("compute_us"), ".0f"), _num(s.get("mean_batch"), ".2f"),
            ]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Queue and compute: Triton's statistics per request (compute = input + inference + output); mean batch: the "
        "images per execution the dynamic batcher formed.",
    ]
    lines += [f"- **FAILED**: {f}" for f in serving.get("failures", [])]
    return lines
