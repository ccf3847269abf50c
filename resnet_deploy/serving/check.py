"""`resnet-deploy serve-check`: serve a repository on a real tritonserver, check it, measure it, report it.

For each model: the validation images go through the server (gRPC, one image a request) and the served logits
are compared with the same engine run in this process on the same file (ONNX Runtime or OpenVINO with the
settings of engines/): top-1 agreement must be 100% and the largest logit difference within `atol` (relative
to the largest logit, at least 1). Then a concurrency sweep (load.py) gives client-side latency percentiles and
throughput and the server-side queue and compute times and batch sizes per level. The result is the `serving`
section of the build's report.json, shown in report.md and report.html.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..progress import Progress
from .load import LoadOptions, send, sweep
from .repository import RepositoryModel, read_repository
from .server import TritonServer, find_tritonserver

AGREEMENT_BATCH = 32  # in-process batch size for the reference logits
AGREEMENT_CONCURRENCY = 4
NATIVE_BACKENDS = {"onnxruntime": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt"}  # Triton's backend folders


@dataclass(frozen=True)
class ServeCheckOptions:
    load: LoadOptions = LoadOptions()
    images: int = 256  # validation images sent for the agreement check (at most)
    models: tuple[str, ...] | None = None  # default: every model of the repository
    atol: float = 1e-3
    threads: int | None = None  # the in-process engine's
    tritonserver: Path | None = None
    grpc_port: int | None = None
    startup_timeout: float = 120.0

    def __post_init__(self) -> None:
        if not 1 <= self.images <= 1_000_000:
            raise UserError(f"--images must be between 1 and 1000000, got {self.images}")
        if not 0 < self.atol <= 1e3:
            raise UserError(f"--atol must be above 0 and at most 1000, got {self.atol:g}")
        if not 1 <= self.startup_timeout <= 3600:
            raise UserError(f"--startup-timeout must be between 1 and 3600 seconds, got {self.startup_timeout:g}")
        if self.grpc_port is not None and not 1024 <= self.grpc_port <= 65535:
            raise UserError(f"--grpc-port must be between 1024 and 65535, got {self.grpc_port}")


def select_models(models: list[RepositoryModel], names: tuple[str, ...] | None) -> list[RepositoryModel]:
    if not names:
        return models
    known = {m.name: m for m in models}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"--models: {', '.join(unknown)} not in the repository (it has: {', '.join(known)})")
    return [known[n] for n in names]


def in_process_runner(model: RepositoryModel, threads: int | None):
    """The engine the served model runs, in this process, on the repository's own file (as the registry plans it)."""
    from dataclasses import replace

    from ..engines import registry
    from ..engines.openvino import OpenVINOOptions, ShapeMode

    family = model.backend.split("-")[0]
    kind = next((k for k in registry.KINDS if k.name == family and not k.builds), None)
    if kind is None:
        raise UserError(f"{model.name}: no in-process engine for {model.backend} here to check it against")
    # OpenVINO with dynamic shapes, as model.py and Triton's OpenVINO backend compile it; ONNX Runtime on the CPU
    options = (OpenVINOOptions(shapes=ShapeMode.DYNAMIC, bf16=model.precision == "bf16"),)
    settings = registry.EngineSettings((kind.name,), threads, options=options)
    file_precision = "fp32" if model.precision == "bf16" else model.precision  # openvino-bf16 runs the FP32 model
    specs = registry.plan(registry.ModelFile(model.model_file, file_precision, model.target), settings)
    spec = next((s for s in specs if s.precision == model.precision), specs[0])
    return registry.runner(replace(spec, name=f"{model.engine} (in process)"))


def agreement(served: np.ndarray, reference: np.ndarray, atol: float) -> dict[str, Any]:
    top1 = float(np.mean(served.argmax(1) == reference.argmax(1)))
    finite = bool(np.isfinite(served).all() and np.isfinite(reference).all())
    diff = float(np.abs(served - reference).max()) if finite else None
    scale = max(1.0, float(np.abs(reference).max())) if finite else 1.0
    return {
        "images": len(served),
        "top1_agreement": top1,
        "max_abs_diff": diff,
        "tolerance": atol * scale,
        "passed": finite and top1 == 1.0 and diff <= atol * scale,
    }


def _check_backends(models: list[RepositoryModel], available: set[str] | None, binary: Path) -> None:
    """A repository the server has no backend for fails early, with what to do (the wheel's server: Python only)."""
    if available is None:
        return
    needed = {"python" if m.variant == "python" else NATIVE_BACKENDS.get(m.backend.split("-")[0], m.backend) for m in models}
    missing = sorted(needed - available)
    if missing:
        raise UserError(
            f"tritonserver {binary} has no {', '.join(missing)} backend (it has: {', '.join(sorted(available))}); "
            "export the repository with --python-backend, or serve it in NVIDIA's Triton container"
        )


def serve_check(repo: Path, images: np.ndarray, options: ServeCheckOptions, progress: Progress = Progress()) -> dict[str, Any]:
    """The `serving` section for the models of `repo`, checked and measured on a real tritonserver."""
    models = select_models(read_repository(repo), options.models)
    install = find_tritonserver(options.tritonserver)
    _check_backends(models, install.backends(), install.binary)
    images = np.ascontiguousarray(images[: options.images], dtype=np.float32)
    results, failures = [], []
    with tempfile.TemporaryDirectory(prefix="resnet-deploy-triton-") as work:
        progress.log(f"starting tritonserver ({install.origin}: {install.binary}) with {len(models)} model(s)")
        server = TritonServer(install, repo, [m.name for m in models], Path(work), options.startup_timeout, options.grpc_port)
        with server:
            for model in models:
                progress.log(f"{model.name}: {len(images)} images through the server, compared with {model.engine} in process")
                sent = send(
                    server.url, model.name, model.input_name, model.output_name, images,
                    min(AGREEMENT_CONCURRENCY, len(images)), len(images), max(60.0, options.load.seconds), keep_outputs=True,
                )  # fmt: skip
                served = np.stack([sent.outputs[i] for i in range(len(images))])
                with in_process_runner(model, options.threads) as runner:
                    reference = np.concatenate(
                        [runner.infer(images[i : i + AGREEMENT_BATCH]) for i in range(0, len(images), AGREEMENT_BATCH)]
                    )
                checked = agreement(served, reference, options.atol)
                if not checked["passed"]:
                    diff = checked["max_abs_diff"]
                    failures.append(
                        f"{model.name}: served logits disagree with {model.engine} in process (top-1 agreement "
                        f"{checked['top1_agreement'] * 100:.2f}%, max abs diff {'NaN/Inf' if diff is None else f'{diff:.3g}'}, "
                        f"tolerance {checked['tolerance']:.3g})"
                    )
                levels = sweep(
                    server.url, model.name, model.input_name, model.output_name, images, options.load,
                    on_level=lambda c, name=model.name: progress.log(f"{name}: concurrency {c}"),
                )  # fmt: skip
                results.append(
                    {"name": model.name, "engine": model.engine, "backend": model.backend, "precision": model.precision,
                     "variant": model.variant, "agreement": checked, "levels": levels}
                )  # fmt: skip
    return {
        "repository": str(Path(repo).absolute()),
        "server": {"binary": str(install.binary), "origin": install.origin, "version": server.version},
        "client": {
            "protocol": "grpc",
            "images_per_request": 1,
            "concurrency": list(options.load.concurrency),
            "requests_per_level": options.load.requests,
            "seconds_per_level": options.load.seconds,
            "warmup_requests": options.load.warmup,
        },
        "models": results,
        "failures": failures,
    }


def write_serving(build: Path, section: dict[str, Any]) -> None:
    """Add (or replace) the `serving` section of the build's report.json, and write report.md/html again."""
    from ..files import write_json_atomic, write_text_atomic
    from ..reports.html import render_html
    from ..reports.markdown import to_markdown
    from ..reports.schema import read_report

    path = Path(build) / "report.json"
    data = read_report(path, "build report")
    data["serving"] = section
    write_json_atomic(path, data)
    write_text_atomic(Path(build) / "report.md", to_markdown(data))
    write_text_atomic(Path(build) / "report.html", render_html(data))
