"""What each engine kind needs in a Triton model: its file name and its part of config.pbtxt.

One entry per backend name as report.json writes it (`onnxruntime`, `openvino`, `tensorrt`), and one per
runtime of the Python-backend variant. Each entry only fills in a `ModelConfig` (Triton's own protobuf,
from tritonclient) that `repository.py` has started with what every model shares (name, inputs, outputs,
batching, instances, labels, preprocessing); nothing here reads the build or writes files. The served model
(`ServedModel`) and the repository's options (`RepositoryOptions`), which each entry reads, are defined here.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from ..errors import UserError


class InstanceKind(StrEnum):
    CPU = "cpu"
    GPU = "gpu"


@dataclass(frozen=True)
class RepositoryOptions:
    """How the models are served (the `resnet-deploy triton` options)."""

    python_backend: bool = False
    max_batch_size: int | None = None  # default: the build's largest benchmark batch size
    preferred_batch_sizes: tuple[int, ...] | None = None  # default: the build's batch sizes above 1
    max_queue_delay_us: int = 100
    instance_count: int = 1
    instance_kind: InstanceKind | None = None  # the ONNX Runtime models' (default cpu); the other kinds have their own
    threads: int | None = None
    python_env: str = sys.prefix  # EXECUTION_ENV_PATH of the Python-backend models: a virtualenv with numpy + the runtime
    onnxruntime_tensorrt: bool = False  # ONNX Runtime models: add ONNX Runtime's TensorRT accelerator (GPU)

    def __post_init__(self) -> None:
        for label, value, low, high in (
            ("--max-batch-size", self.max_batch_size, 1, 4096),
            ("--max-queue-delay-us", self.max_queue_delay_us, 0, 10_000_000),
            ("--instance-count", self.instance_count, 1, 256),
            ("--threads", self.threads, 1, 1024),
        ):
            if value is not None and not low <= value <= high:
                raise UserError(f"{label} must be between {low} and {high}, got {value}")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    data_type: str  # Triton's: TYPE_FP32, ...
    dims: tuple[int, ...]  # without the batch dimension when the model batches


@dataclass(frozen=True)
class ServedModel:
    """One engine of the build as a Triton model."""

    name: str
    engine: str  # the engine's name in report.json, e.g. onnxruntime-int8
    backend: str  # report.json's backend: onnxruntime (or onnxruntime-cuda, ...), openvino, tensorrt
    precision: str
    target: str | None
    source: Path  # the engine's file in the build folder
    source_sha256: str
    input: TensorSpec
    output: TensorSpec
    batched: bool
    max_batch_size: int
    preprocess: dict[str, Any]
    manifest: dict[str, Any] | None = None  # TensorRT engines: the build manifest (GPU, compute capability, ...)


# ONNX Runtime's TensorRT accelerator (Triton's onnxruntime backend): the precision it may build in, per model.
ORT_TENSORRT_PRECISION = {"fp32": "FP32", "fp16": "FP16", "int8": "INT8"}
ORT_TENSORRT_CACHE = "/tmp/resnet-deploy-trt-cache"  # inside the server's container


def set_parameter(config: Any, key: str, value: object) -> None:
    config.parameters[key].string_value = str(value)


@dataclass(frozen=True)
class Kind:
    """How one engine kind is served: the file in `<model>/1/`, the instance kind it runs on, its config."""

    model_file: str
    instance: InstanceKind | None  # None: the ONNX Runtime models, which take --instance-kind (cpu by default)
    configure: Callable[[Any, ServedModel, RepositoryOptions], None]
    extra_files: tuple[str, ...] = field(default=())  # written beside the model file (the Python backend's model.py)


def _onnxruntime(config: Any, model: ServedModel, options: RepositoryOptions) -> None:
    config.platform = "onnxruntime_onnx"
    config.default_model_filename = "model.onnx"
    if options.threads:
        set_parameter(config, "intra_op_thread_count", options.threads)
        set_parameter(config, "inter_op_thread_count", 1)
    if options.onnxruntime_tensorrt:
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add()
        accelerator.name = "tensorrt"
        accelerator.parameters["precision_mode"] = ORT_TENSORRT_PRECISION.get(model.precision, "FP32")
        accelerator.parameters["trt_engine_cache_enable"] = "1"
        accelerator.parameters["trt_engine_cache_path"] = f"{ORT_TENSORRT_CACHE}/{model.name}"


def _openvino(config: Any, model: ServedModel, options: RepositoryOptions) -> None:
    config.backend = "openvino"
    config.default_model_filename = "model.onnx"
    set_parameter(config, "PERFORMANCE_HINT", "LATENCY")
    if options.threads:
        set_parameter(config, "INFERENCE_NUM_THREADS", options.threads)
    if model.precision == "bf16":
        set_parameter(config, "HINT_BF16", "YES")


def _tensorrt(config: Any, model: ServedModel, options: RepositoryOptions) -> None:
    config.platform = "tensorrt_plan"
    config.default_model_filename = "model.plan"
    capability = (model.manifest or {}).get("gpu", {}).get("compute_capability")
    if capability:  # Triton picks the plan by the GPU's compute capability: this one runs only there
        config.cc_model_filenames[str(capability)] = "model.plan"


def _python(runtime: str) -> Callable[[Any, ServedModel, RepositoryOptions], None]:
    def configure(config: Any, model: ServedModel, options: RepositoryOptions) -> None:
        config.backend = "python"
        set_parameter(config, "runtime", runtime)
        set_parameter(config, "model_file", "model.onnx")
        set_parameter(config, "EXECUTION_ENV_PATH", options.python_env)
        if options.threads:
            set_parameter(config, "threads", options.threads)
        if runtime == "openvino":
            set_parameter(config, "inference_precision", "bf16" if model.precision == "bf16" else "f32")

    return configure


# The native backends of NVIDIA's Triton containers, by the backend name report.json uses.
NATIVE: dict[str, Kind] = {
    "onnxruntime": Kind("model.onnx", None, _onnxruntime),
    "openvino": Kind("model.onnx", InstanceKind.CPU, _openvino),
    "tensorrt": Kind("model.plan", InstanceKind.GPU, _tensorrt),
}

# The Python-backend variant (any Triton with its Python backend, CPU only): the same ONNX file run by model.py.
PYTHON: dict[str, Kind] = {
    "onnxruntime": Kind("model.onnx", InstanceKind.CPU, _python("onnxruntime"), ("model.py",)),
    "openvino": Kind("model.onnx", InstanceKind.CPU, _python("openvino"), ("model.py",)),
}

PYTHON_MODEL_SOURCE = Path(__file__).with_name("python_model.py")


def kind_of(backend: str, python_backend: bool) -> Kind | None:
    """The entry for a report.json backend name (`onnxruntime-cuda` is onnxruntime), None when this variant has none."""
    family = backend.split("-")[0]
    return (PYTHON if python_backend else NATIVE).get(family)
