"""Engine names: `<backend>-<precision>[-<target>]`, as report.json, the tables and the Triton repository show them."""

from __future__ import annotations

from typing import Any

# The INT8 recipe each backend runs by default: its own, except OpenVINO, whose default is the onnxruntime-target
# U8S8 Q/DQ model (measured as fast on OpenVINO as OpenVINO's own NNCF quantization; README, Performance).
# A backend not listed runs its own (its name is its native target).
NATIVE_TARGET = {"onnxruntime": "onnxruntime", "openvino": "onnxruntime", "tensorrt": "tensorrt"}


def native_target(backend: str) -> str:
    """The INT8 target whose model `backend` (or its family: `onnxruntime-cuda` is onnxruntime) runs by default."""
    family = backend.split("-")[0]
    return NATIVE_TARGET.get(family, family)


def engine_name(backend: str, precision: str, target: str | None) -> str:
    """`<backend>-<precision>`, plus `-<target>` when the model is not the one made for this backend.

    A backend may name its device: `onnxruntime-cuda` (ONNX Runtime on its CUDA execution provider) is
    still onnxruntime, so `onnxruntime-cuda-int8` runs the INT8 model made for onnxruntime. OpenVINO runs the
    onnxruntime-target INT8 model as its own (`openvino-int8`); the tensorrt-target one is `openvino-int8-tensorrt`.
    """
    name = f"{backend}-{precision}"
    return f"{name}-{target}" if target and target != native_target(backend) else name


def int8_compute(engine: dict[str, Any]) -> str | None:
    """How an INT8 row computes when that is not real INT8 (ONNX Runtime's CUDA provider), from its runner details."""
    details = engine.get("details") or {}
    return (details.get("runtime") or details).get("int8_compute")


def precision_label(engine: dict[str, Any]) -> str:
    """The row's precision, marked when its INT8 is simulated (DequantizeLinear + FP32 convolutions)."""
    return f"{engine['precision']} (simulated: DequantizeLinear + FP32 convs)" if int8_compute(engine) else engine["precision"]
