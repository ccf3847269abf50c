"""The environment a report was measured in: host (CPU, its INT8 instruction sets, threads, GPU) and versions.

What a latency number needs to be compared like with like; gates/environment.py compares two of them.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

from ..isa import host_isa


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
