"""The build report's data: `report.json` (a public interface, schema resnet-deploy/report/v1).

`Report.return_code` decides the exit code of a build; the CLI only renders it. The report's rows hold an
engine's `Accuracy` (engines/accuracy.py) and its `Latency` (here; measured by pipeline/benchmark.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..engines.accuracy import Accuracy

if TYPE_CHECKING:
    from ..gates import GateReport

SCHEMA = "resnet-deploy/report/v1"

SAMPLE_DECIMALS = 4  # samples are kept in ms to 0.1 us: compact in report.json, far below timer noise


@dataclass(frozen=True)
class Latency:
    batch_size: int
    iterations: int
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    throughput_ips: float  # images per second at the mean latency
    # GPU runners only: compute time on the device (CUDA events around the engine's execution, without the
    # host<->device copies). The fields above are then the end-to-end time of a call, copies included.
    gpu_p50_ms: float | None = None
    gpu_p99_ms: float | None = None
    gpu_mean_ms: float | None = None
    # Every timed call in order, in ms rounded to 0.1 us (for distribution plots). Reports written before
    # this field existed have no `samples_ms`; readers treat it as optional.
    samples_ms: tuple[float, ...] = ()

    def as_dict(self) -> dict[str, float | int | list[float]]:
        out = {key: value for key, value in asdict(self).items() if value is not None or not key.startswith("gpu_")}
        out["samples_ms"] = list(self.samples_ms)
        return out

    @classmethod
    def from_samples(cls, batch_size: int, samples_ms: np.ndarray, device_ms: np.ndarray | None = None) -> "Latency":
        p50, p90, p95, p99 = np.percentile(samples_ms, [50, 90, 95, 99])
        mean = float(samples_ms.mean())
        gpu: dict[str, float] = {}
        if device_ms is not None and device_ms.size:
            gpu_p50, gpu_p99 = np.percentile(device_ms, [50, 99])
            gpu = {"gpu_p50_ms": float(gpu_p50), "gpu_p99_ms": float(gpu_p99), "gpu_mean_ms": float(device_ms.mean())}
        return cls(
            batch_size=batch_size,
            iterations=int(samples_ms.size),
            p50_ms=float(p50),
            p90_ms=float(p90),
            p95_ms=float(p95),
            p99_ms=float(p99),
            mean_ms=mean,
            std_ms=float(samples_ms.std(ddof=1)) if samples_ms.size > 1 else 0.0,
            min_ms=float(samples_ms.min()),
            max_ms=float(samples_ms.max()),
            throughput_ips=batch_size * 1000.0 / mean if mean > 0 else 0.0,
            **gpu,
            samples_ms=tuple(round(float(x), SAMPLE_DECIMALS) for x in samples_ms),
        )


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
