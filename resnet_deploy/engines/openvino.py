"""OpenVINO engine: an ONNX file (FP32, FP16 or INT8 Q/DQ) compiled by the OpenVINO runtime for the CPU.

OpenVINO reads the ONNX directly: a Q/DQ model (either target's) runs as INT8, the FP16 AutoCast model
computes in FP32 from FP16 weights. Settings that decide what the numbers mean:

- **Inference precision f32.** On CPUs with bfloat16 instructions OpenVINO's CPU plugin runs FP32 layers
  in bfloat16 by default (`INFERENCE_PRECISION_HINT` is bf16 there), which is a different model from the
  FP32 one that was validated. Every engine here asks for f32 and checks what the compiled model got;
  bfloat16 only as an engine named `openvino-bf16` (`OpenVINOOptions.bf16`).
- **Static batch.** The ONNX has a dynamic batch axis. OpenVINO's CPU kernels are faster on a static
  shape, so by default the runner compiles one model per batch size it sees (least recently used
  dropped beyond MAX_STATIC_SHAPES); any batch size works. `ShapeMode.DYNAMIC` compiles one model for all.
- **Requests.** One synchronous request when the compiled model wants one (the latency hint); with more
  streams (the throughput hint, or `streams`) a batch is split into equal chunks run in parallel
  requests, one per stream, the last chunk padded by repeating its last image.
- **Model cache.** With `cache_dir`, compiled models are written there and loaded from there on the next
  start (`describe()["compiled"][...]["loaded_from_cache"]` says which).
"""

from __future__ import annotations

import enum
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckFailed, MissingDependency, UserError
from ..options import Configurable, Setting, parse_choice
from .base import Runner
from .kind import EngineKind, EngineSettings, EngineSpec, Model

DEVICE = "CPU"
# What the compiled model says about how it runs, copied into describe() as compiled_<name in lower case>.
REPORTED_PROPERTIES = (
    "INFERENCE_PRECISION_HINT",
    "EXECUTION_MODE_HINT",
    "PERFORMANCE_HINT",
    "INFERENCE_NUM_THREADS",
    "NUM_STREAMS",
    "OPTIMAL_NUMBER_OF_INFER_REQUESTS",
    "ENABLE_CPU_PINNING",
)
COMPUTE_LAYERS = ("Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul")
INFERENCE_PRECISION = {"bf16": "bf16"}  # runner precision -> OpenVINO inference precision; every other one: f32


# ------------------------------------------------------------------------------------- options


class PerformanceHint(enum.StrEnum):
    """OpenVINO's performance hint: one request as fast as possible, or many requests in parallel streams."""

    LATENCY = "latency"
    THROUGHPUT = "throughput"


class ShapeMode(enum.StrEnum):
    """How OpenVINO compiles the batch axis: one model per batch size seen (static), or one for all (dynamic)."""

    STATIC = "static"
    DYNAMIC = "dynamic"


MAX_STATIC_SHAPES = 8  # compiled batch sizes an OpenVINO runner keeps (least recently used is dropped)


@dataclass(frozen=True)
class OpenVINOOptions(Configurable):
    """How OpenVINO compiles and runs the ONNX models on the CPU. None means OpenVINO's default.

    Every model is compiled with inference precision f32: OpenVINO's CPU plugin otherwise runs FP32
    layers in bfloat16 on CPUs that have it (its default there), which is not the FP32 model that was
    validated. `bf16` adds an engine that does exactly that, named `openvino-bf16`.
    """

    SETTINGS = (
        Setting(
            "openvino_hint",
            str,
            "OpenVINO: latency or throughput.",
            "latency",
            parse=lambda text, option: parse_choice(PerformanceHint, text, option),
            field="hint",
        ),
        Setting(
            "openvino_streams",
            int,
            "OpenVINO: parallel inference streams (default: the hint's).",
            limits=(1, 1024),
            field="streams",
        ),
        Setting(
            "openvino_cache_dir",
            Path,
            "OpenVINO: folder for compiled models, loaded from there on the next start.",
            field="cache_dir",
        ),
        Setting(
            "openvino_shapes",
            str,
            "OpenVINO: static (one compiled model per batch size; faster) or dynamic (one for all).",
            "static",
            parse=lambda text, option: parse_choice(ShapeMode, text, option),
            field="shapes",
        ),
        Setting("openvino_bf16", bool, "OpenVINO: also run the FP32 model in bfloat16 (openvino-bf16).", field="bf16"),
    )

    hint: PerformanceHint = PerformanceHint.LATENCY
    streams: int | None = None  # parallel inference streams (default: what the hint chooses)
    cache_dir: Path | None = None  # compiled models are stored here and loaded on the next start
    shapes: ShapeMode = ShapeMode.STATIC
    bf16: bool = False  # also run the FP32 model with bfloat16 inference precision (`openvino-bf16`)

    def __post_init__(self) -> None:
        if not isinstance(self.hint, PerformanceHint):
            raise UserError(f"--openvino-hint: expected one of {', '.join(h.value for h in PerformanceHint)}")
        if not isinstance(self.shapes, ShapeMode):
            raise UserError(f"--openvino-shapes: expected one of {', '.join(s.value for s in ShapeMode)}")
        self.check_ranges()
        if self.cache_dir is not None and Path(self.cache_dir).exists() and not Path(self.cache_dir).is_dir():
            raise UserError(f"--openvino-cache-dir {self.cache_dir} is a file; give a folder (it is created if missing)")

    def as_dict(self) -> dict[str, Any]:
        return {
            "hint": self.hint.value,
            "streams": self.streams,
            "cache_dir": None if self.cache_dir is None else str(self.cache_dir),
            "shapes": self.shapes.value,
            "bf16": self.bf16,
        }


# ------------------------------------------------------------------------------------- availability


def openvino_missing() -> str | None:
    """Why OpenVINO cannot run here (its module does not import), or None when it can."""
    try:
        import openvino  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - ImportError, or an OSError from its native libraries
        return f"OpenVINO is not installed here (no importable `openvino` module: {type(exc).__name__}); pip install openvino"
    return None


def require_openvino(what: str) -> None:
    missing = openvino_missing()
    if missing:
        raise MissingDependency(f"{what}: {missing}, or leave openvino out of --engines")


def require_bf16(what: str, core: Any = None) -> None:
    """A bfloat16 engine needs a CPU that OpenVINO runs bfloat16 on (AVX-512 BF16 or AMX)."""
    require_openvino(what)
    import openvino as ov

    capabilities = list((core or ov.Core()).get_property(DEVICE, "OPTIMIZATION_CAPABILITIES"))
    if "BF16" not in capabilities:
        raise MissingDependency(
            f"{what}: this CPU has no bfloat16 instructions (OpenVINO's capabilities: {', '.join(capabilities)}); "
            "drop --openvino-bf16"
        )


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and not line.startswith("Exception from")]
    return (lines or [type(exc).__name__])[0][:300]


@dataclass
class _Compiled:
    """One compiled model (one batch size, or every batch size when dynamic) and its infer requests."""

    model: Any  # openvino.CompiledModel
    requests: list[Any] = field(default_factory=list)
    seconds: float = 0.0
    loaded_from_cache: bool = False

    def request(self, index: int) -> Any:
        while len(self.requests) <= index:
            self.requests.append(self.model.create_infer_request())
        return self.requests[index]


class OpenVINORunner(Runner):
    backend = "openvino"

    def __init__(
        self,
        onnx_path: Path,
        name: str,
        precision: str,
        target: str | None = None,
        threads: int | None = None,
        options: OpenVINOOptions = OpenVINOOptions(),
    ) -> None:
        super().__init__(name, precision, target)
        self.onnx_path = Path(onnx_path)
        self.threads = threads
        self.options = options
        self.inference_precision = INFERENCE_PRECISION.get(precision, "f32")
        self._core = None
        self._model = None
        self._compiled: OrderedDict[int | None, _Compiled] = OrderedDict()
        self._requests: int | None = None
        self._history: dict[str, dict[str, Any]] = {}  # every compile of this runner, for describe()
        self._runtime: dict[str, Any] = {}  # what the last compiled model reports: threads, streams, ...

    # -- lifecycle

    def _activate(self) -> None:
        require_openvino(f"runner {self.name}")
        import openvino as ov

        core = ov.Core()
        if self.inference_precision == "bf16":
            require_bf16(f"runner {self.name}", core)
        try:
            model = core.read_model(str(self.onnx_path))
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses for any bad model
            raise UserError(f"OpenVINO cannot read {self.onnx_path}: {_first_line(exc)}") from None
        if len(model.inputs) != 1 or not model.outputs:
            raise UserError(f"{self.onnx_path} has {len(model.inputs)} inputs; expected one image input")
        if model.input(0).get_partial_shape().rank.get_length() != 4:
            raise UserError(f"{self.onnx_path}: input shape {model.input(0).get_partial_shape()} is not (N, C, H, W)")
        if self.options.cache_dir is not None:
            Path(self.options.cache_dir).mkdir(parents=True, exist_ok=True)
        self._core, self._model = core, model
        self._compiled.clear()
        self._requests = None

    def _deactivate(self) -> None:
        self._compiled.clear()  # requests before their compiled models, compiled models before the core
        self._model = None
        self._core = None

    def _config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": self.options.hint.value.upper(),
            "INFERENCE_PRECISION_HINT": self.inference_precision,
        }
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
        if self.options.streams:
            config["NUM_STREAMS"] = int(self.options.streams)
        if self.options.cache_dir is not None:
            config["CACHE_DIR"] = str(self.options.cache_dir)
        return config

    # -- compiled models

    def prepare(self, batch_size: int) -> None:
        """Compile for `batch_size` now, so the first timed call does not pay for it."""
        if not self.is_active:
            raise RuntimeError(f"runner {self.name} is not active: use it inside a `with` block")
        self._compiled_for(self._chunk_size(batch_size))

    def _compiled_for(self, batch_size: int) -> _Compiled:
        key = None if self.options.shapes is ShapeMode.DYNAMIC else batch_size
        entry = self._compiled.get(key)
        if entry is not None:
            self._compiled.move_to_end(key)
            return entry
        model = self._model
        if key is not None:
            model = model.clone()
            chw = [d.get_length() for d in list(model.input(0).get_partial_shape())[1:]]
            model.reshape({model.input(0): [key, *chw]})
        started = time.perf_counter()
        try:
            compiled = self._core.compile_model(model, DEVICE, self._config())
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"OpenVINO cannot compile {self.onnx_path.name} for the CPU: {_first_line(exc)}") from None
        got = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        if got != self.inference_precision:
            raise CheckFailed(
                f"OpenVINO compiled {self.onnx_path.name} with inference precision {got}, not {self.inference_precision}"
            )
        entry = _Compiled(compiled, seconds=time.perf_counter() - started, loaded_from_cache=_loaded_from_cache(compiled))
        self._compiled[key] = entry
        self._history["dynamic" if key is None else str(key)] = {
            "compile_seconds": round(entry.seconds, 3),
            "loaded_from_cache": entry.loaded_from_cache,
        }
        self._runtime = {f"compiled_{key.lower()}": _plain(compiled.get_property(key)) for key in REPORTED_PROPERTIES}
        self._runtime["executed"] = executed(compiled)
        while len(self._compiled) > MAX_STATIC_SHAPES:
            self._compiled.popitem(last=False)
        return entry

    def _parallel_requests(self, batch_size: int) -> int:
        """Requests the compiled model runs in parallel (one per stream): 1 under the latency hint."""
        if self._requests is None:
            if self.options.hint is PerformanceHint.LATENCY and (self.options.streams or 1) == 1:
                self._requests = 1
            else:
                compiled = self._compiled_for(batch_size).model
                self._requests = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        return self._requests

    def _chunk_size(self, batch_size: int) -> int:
        """Images per request: the batch split evenly over the parallel requests (rounded up)."""
        return -(-batch_size // min(self._parallel_requests(batch_size), batch_size))

    # -- inference

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        chunk = self._chunk_size(len(batch))
        entry = self._compiled_for(chunk)
        if chunk == len(batch):
            return entry.request(0).infer({0: batch}, share_inputs=True)[0]
        parts = [batch[start : start + chunk] for start in range(0, len(batch), chunk)]
        inputs = [
            np.concatenate([p, np.repeat(p[-1:], chunk - len(p), axis=0)]) if self.options.shapes is ShapeMode.STATIC else p
            for p in parts
        ]  # kept alive until every request is done: the requests read them in place
        for i, part in enumerate(inputs):
            entry.request(i).start_async({0: part}, share_inputs=True)
        outputs = []
        for i, part in enumerate(parts):
            request = entry.request(i)
            request.wait()
            outputs.append(request.get_output_tensor(0).data[: len(part)].copy())
        return np.concatenate(outputs)

    def describe(self) -> dict[str, object]:
        """Settings asked for and what the compiled models report (kept after the runner is closed)."""
        import openvino as ov

        return {
            "openvino": ov.get_version(),
            "device": DEVICE,
            "path": str(self.onnx_path),
            **self.options.as_dict(),
            "threads": self.threads,
            "inference_precision": self.inference_precision,
            **self._runtime,
            "compiled": dict(self._history),
        }


def executed(compiled: Any) -> dict[str, Any]:
    """What the compiled model runs, from OpenVINO's executed graph: the number of nodes (constants, inputs and
    outputs aside) and how many compute layers run at which precision, e.g. {"nodes": 60, "compute_layers":
    {"Convolution": {"u8": 53}, "FullyConnected": {"u8": 1}}} for an INT8 ResNet-50 (u8/i8: INT8 kernels)."""
    nodes, layers = 0, {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str)
        nodes += kind not in ("Const", "Input", "Output", "Parameter", "Result")
        if kind in COMPUTE_LAYERS:
            precision = info["runtimePrecision"].astype(str)
            layers.setdefault(kind, {})
            layers[kind][precision] = layers[kind].get(precision, 0) + 1
    return {"nodes": nodes, "compute_layers": layers}


def _plain(value: Any) -> Any:
    """An OpenVINO property value as JSON: numbers and booleans as they are, Types and enums by name."""
    if isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "get_type_name"):
        return value.get_type_name()
    return str(value).rsplit(".", 1)[-1]


def _loaded_from_cache(compiled: Any) -> bool:
    try:
        return bool(compiled.get_property("LOADED_FROM_CACHE"))
    except Exception:  # noqa: BLE001 - an OpenVINO without the property: unknown means no
        return False


class OpenVINOKind(EngineKind):
    """Every ONNX model on OpenVINO's CPU plugin in f32 inference precision; with `OpenVINOOptions.bf16` the FP32
    model once more in bfloat16 (`openvino-bf16`)."""

    name = "openvino"
    title = "OpenVINO"
    options_type = OpenVINOOptions
    cpu_runtime = True

    def available(self) -> str | None:
        return openvino_missing()

    def _plan(self, model: Model, settings: EngineSettings) -> list[EngineSpec]:
        specs = [self.spec(model, settings)]
        if self.options(settings).bf16 and model.precision == "fp32":
            specs.append(self.spec(model, settings, precision="bf16"))
        return specs

    def _runner(self, spec: EngineSpec) -> OpenVINORunner:
        return OpenVINORunner(spec.file, spec.name, spec.precision, spec.target, spec.threads, spec.options)
