"""The build report: `report.json` (a public interface, schema resnet-deploy/report/v1) and `report.md`.

`Report.return_code` decides the exit code of a build; the CLI only renders it.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..artifacts import write_json_atomic, write_text_atomic
from .benchmark import Latency
from .validate import Accuracy

SCHEMA = "resnet-deploy/report/v1"


def engine_name(backend: str, precision: str, target: str | None) -> str:
    """`<backend>-<precision>`, plus `-<target>` when the model was made for another consumer."""
    name = f"{backend}-{precision}"
    return f"{name}-{target}" if target and target != backend else name


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
            "details": self.details,
            "error": self.error,
            "passed": not self.failed,
        }


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


def environment(threads: int | None) -> dict[str, Any]:
    """Host and versions: what a latency number needs to be compared like with like."""
    import torch

    return {
        "host": {
            "cpu": _cpu_model(),
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
    warnings: list[str] = field(default_factory=list)  # things the user should look at (the CLI prints them)
    calibration: dict[str, Any] | None = None  # method, samples, data, cache reuse, calib.json path

    @property
    def failures(self) -> list[str]:
        return [f"{e.name}: {e.accuracy.nonfinite_outputs} outputs are NaN/Inf" for e in self.engines if e.failed]

    @property
    def return_code(self) -> int:
        return 1 if self.failures else 0

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
            "warnings": self.warnings,
            "failures": self.failures,
            **self.environment,
        }

    def write(self, folder: Path) -> None:
        write_json_atomic(Path(folder) / "report.json", self.as_dict())
        write_text_atomic(Path(folder) / "report.md", to_markdown(self.as_dict()))


# ------------------------------------------------------------------------------------------ markdown


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.2f}%"


def _num(value: float | None, fmt: str = ".3g") -> str:
    return "n/a" if value is None else format(value, fmt)


def _latency_at(latency: list[dict[str, Any]], batch_size: int) -> dict[str, Any] | None:
    return next((row for row in latency if row["batch_size"] == batch_size), None)


def to_markdown(report: dict[str, Any]) -> str:
    """A readable page from a report dict (works on a report.json read back from disk)."""
    model, fold, export = report["model"], report["fold"], report["export"]
    host = report.get("host", {})
    lines = [
        f"# resnet-deploy report: {model['arch']}",
        "",
        f"- weights sha256 `{model['weights_sha256'][:16]}…`, {model['num_classes']} classes, "
        f"input {'x'.join(map(str, model['input_shape']))}",
        f"- BN folding: {fold['folded']} folded, {fold['remaining_batchnorm']} remaining, "
        f"max abs diff {_num(fold.get('max_abs_diff'))}",
        f"- ONNX export: opset {export['opset']}, max abs diff vs PyTorch {_num(export.get('max_abs_diff'))}",
        f"- host: {host.get('cpu', '?')}, {host.get('threads', '?')} threads, GPU: {host.get('gpu') or 'none'}",
        "",
        "## Accuracy against the PyTorch reference",
        "",
        "| engine | precision | target | top-1 agree | top-5 agree | max abs diff | cosine min | top-1 | top-1 drop (pts) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ref = report["reference"]
    lines.append(f"| {ref['name']} (reference) | fp32 | | 100% | 100% | 0 | 1 | {_pct(ref.get('top1'))} | |")
    for engine in report["engines"]:
        acc = engine.get("accuracy")
        if engine.get("error"):
            lines.append(f"| {engine['name']} | {engine['precision']} | {engine['target'] or ''} | {engine['error']} ||||||")
            continue
        if acc is None:
            continue
        drop = acc.get("top1_drop_points")
        lines.append(
            f"| {engine['name']} | {engine['precision']} | {engine['target'] or ''} | {_pct(acc['top1_agreement'])} | "
            f"{_pct(acc['top5_agreement'])} | {_num(acc['max_abs_diff'])} | {_num(acc['cosine_min'], '.6f')} | "
            f"{_pct(acc.get('top1'))} | {_num(drop, '+.2f')} |"
            + ("" if engine.get("passed", True) else " **FAILED: NaN/Inf outputs**")
        )
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
                    ["n/a"] * 3
                    if row is None
                    else [f"{row['p50_ms']:.2f}", f"{row['p99_ms']:.2f}", f"{row['throughput_ips']:.1f}"]
                )
            lines.append(f"| {entry['name']} | " + " | ".join(cells) + " |")
    lines += _precision_section(report)
    if report.get("stages"):
        lines += ["", "## Stages (wall seconds)", ""]
        lines += [f"- {name}: {seconds:.1f}" for name, seconds in report["stages"].items()]
    for note in report.get("notes", []):
        lines.append(f"- note: {note}")
    for warning in report.get("warnings", []):
        lines.append(f"- **warning**: {warning}")
    if report.get("failures"):
        lines += ["", "## Failures", ""] + [f"- {f}" for f in report["failures"]]
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
