"""ONNX Runtime engine: an ONNX file run by an InferenceSession (CPU by default; CUDA/TensorRT on request).

With `--providers tensorrt` ONNX Runtime's TensorRT execution provider gets what a model needs (INT8 for a Q/DQ
model, FP16 for an FP16 one, the batch profile) and caches its engines and timing, keyed by the model's content;
CUDA comes after it (for nodes TensorRT does not take), the CPU last. None of the GPU providers has run here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..artifacts import read_onnx
from ..errors import MissingDependency, UserError
from ..files import sha256_file
from ..options import Configurable, Setting
from .base import Runner
from .kind import EngineKind, EngineSettings, EngineSpec, Model
from .trt import BatchProfile

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
PREFERENCE = ("tensorrt", "cuda", "cpu")  # the order ONNX Runtime is given them in


def parse_providers(text: str, option: str = "--providers") -> tuple[str, ...]:
    """'cuda,cpu' -> ('cuda', 'cpu'); always in ONNX Runtime's order of preference: TensorRT, CUDA, CPU.

    TensorRT takes the nodes it can, CUDA the rest on the GPU (so `tensorrt` brings `cuda` along, as ONNX
    Runtime's documentation asks), and the CPU provider is always last as the fallback.
    """
    names = set()
    for part in (p.strip().lower() for p in text.split(",") if p.strip()):
        if part not in PROVIDERS:
            raise UserError(f"{option}: unknown execution provider {part!r}; valid: {', '.join(PROVIDERS)}")
        names.add(part)
    if "tensorrt" in names:
        names.add("cuda")
    return tuple(p for p in PREFERENCE if p in names or p == "cpu")


def _preload_cuda_libraries(ort) -> None:
    """Let ONNX Runtime's GPU providers find the CUDA/cuDNN libraries of the nvidia-* pip packages.

    onnxruntime-gpu is built for one CUDA major version (12.x for 1.24), which may differ from PyTorch's;
    `pip install onnxruntime-gpu[cuda,cudnn]` brings its own, and this loads them (silently: a provider
    that still cannot start is reported by the check below).
    """
    import contextlib
    import io

    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(Exception):
            preload()


# ONNX Runtime's graph optimizer that quantizes the FP32 weights of a Conv/Gemm fed by a DequantizeLinear (to
# per-tensor INT8). A model made for TensorRT is run here to check what TensorRT computes, and TensorRT keeps
# such a node in FP32 (strongly typed: no Q/DQ on its weights, no INT8): so it is off for those models. Models
# made for ONNX Runtime feed their FP32 nodes no DequantizeLinear at all (quantize.read_float_inputs).
NOT_FOR_TENSORRT_MODELS = ("WeightBiasQuantization",)


def ort_backend_label(providers: tuple[str, ...]) -> str:
    """`onnxruntime` on the CPU; `onnxruntime-cuda` / `onnxruntime-tensorrt` when a GPU provider comes first."""
    return "onnxruntime" if providers[0] == "cpu" else f"onnxruntime-{providers[0]}"


# What an INT8 (Q/DQ) model computes on ONNX Runtime's CUDA provider: it runs each DequantizeLinear and then the
# convolution in FP32 (no fused INT8 kernels), so the row measures INT8 numerics at FP32 (or slower) speed.
SIMULATED_INT8 = "simulated INT8: DequantizeLinear + FP32 convolutions on the CUDA execution provider"


def default_cache_root() -> Path:
    """Where ONNX Runtime's TensorRT provider keeps its engines and timing cache: $XDG_CACHE_HOME/resnet-deploy/ort-tensorrt."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "resnet-deploy" / "ort-tensorrt"


@dataclass(frozen=True)
class OrtTensorrtOptions:
    """What ONNX Runtime's TensorRT execution provider gets besides the model (`--providers tensorrt`).

    `profile` is the (min, opt, max) batch size of its one optimization profile; None lets the provider
    derive profiles from the shapes it sees (rebuilding its engine when a new one comes). Its engines are
    cached under `cache_root`, in a folder named after the model's sha256: the provider's own cache key
    hashes the model's file name and tensor names, not its weights, so two models of the same architecture
    must not share a folder. The timing cache (per compute capability, named by the provider) is shared.
    """

    profile: tuple[int, int, int] | None = None
    cache_root: Path | None = None  # None: default_cache_root()

    def root(self) -> Path:
        return self.cache_root or default_cache_root()


@dataclass(frozen=True)
class OrtOptions(Configurable):
    """How ONNX Runtime runs the ONNX models: its execution providers (`--providers`, parsed by parse_providers)."""

    SETTINGS = (
        Setting("providers", str, "ONNX Runtime execution providers: cpu, cuda, tensorrt.", "cpu", parse=parse_providers),
    )

    providers: tuple[str, ...] = ("cpu",)

    def __post_init__(self) -> None:
        if not self.providers or self.providers[-1] != "cpu" or any(p not in PROVIDERS for p in self.providers):
            raise UserError(f"--providers: expected some of {', '.join(PROVIDERS)} ending with cpu, got {self.providers}")


def ort_tensorrt_options(batch_sizes: Sequence[int], largest: int = 1, opt: int | None = None) -> OrtTensorrtOptions:
    """ONNX Runtime's TensorRT provider profile: opt as for TensorRT's own engines (from the benchmarked sizes),
    min 1 and max the largest batch it will see (`largest`: validation's batch size; its last batch may be short)."""
    profile = BatchProfile.from_batch_sizes(tuple(batch_sizes), opt)
    return OrtTensorrtOptions(profile=(1, profile.opt, max(profile.max, largest)))


def tensorrt_provider_options(
    precision: str, input_name: str, chw: tuple[int, int, int], model_sha256: str, options: OrtTensorrtOptions
) -> dict[str, str]:
    """The TensorRT execution provider's options for one model (names and value syntax of ONNX Runtime 1.24).

    A Q/DQ model needs INT8 enabled (else TensorRT fails with "int8 is not configured in the builder"), an FP16
    (AutoCast) model FP16 enabled (else its FP16 layers may run in FP32): ONNX Runtime builds weakly typed networks.
    """
    root = options.root()
    values = {
        "trt_int8_enable": str(precision == "int8"),
        "trt_fp16_enable": str(precision == "fp16"),
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(root / model_sha256[:16]),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(root),
    }
    if options.profile is not None:
        c, h, w = chw
        for kind, batch in zip(("min", "opt", "max"), options.profile):
            values[f"trt_profile_{kind}_shapes"] = f"{input_name}:{batch}x{c}x{h}x{w}"
    return values


def tensorrt_refusal(ort_version: str, detail: str) -> str:
    """One line for a TensorRT execution provider that could not start (or build its engine)."""
    versions = ""
    if _version(ort_version) < (1, 27):
        versions = (
            f"; onnxruntime-gpu {ort_version} runs TensorRT 10 for CUDA 12 only (libnvinfer.so.10), "
            "ONNX Runtime supports TensorRT 11 only from 1.27"
        )
    return (
        f"ONNX Runtime {ort_version} could not start its TensorRT execution provider ({detail}){versions}; "
        "use --providers cuda (or cpu) for ONNX Runtime here, and --target tensorrt for TensorRT engines"
    )


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(m) for m in re.findall(r"\d+", text.split("+")[0])[:3])


def _ort_error(exc: BaseException) -> str:
    """ONNX Runtime's error text without the C++ source location and signature it starts with."""
    line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return re.sub(r"^\S+\.(?:cc|h):\d+ [^()]*\([^)]*\)\s*", "", line)[:200]


class OrtRunner(Runner):
    """An ONNX file on ONNX Runtime. With `exact`, graph optimizations are off: every QuantizeLinear,
    DequantizeLinear and float op runs as the ONNX spec defines it (no fused integer kernels), on the CPU:
    the model's own accuracy, whatever the host's INT8 instructions (`exact_runner`)."""

    backend = "onnxruntime"

    def __init__(
        self,
        onnx_path: Path,
        name: str,
        precision: str,
        target: str | None = None,
        providers: tuple[str, ...] = ("cpu",),
        threads: int | None = None,
        tensorrt: OrtTensorrtOptions | None = None,
        exact: bool = False,
    ) -> None:
        super().__init__(name, precision, target)
        self.onnx_path = Path(onnx_path)
        self.providers = ("cpu",) if exact else providers
        self.threads = threads
        self.exact = exact
        self.tensorrt = tensorrt or OrtTensorrtOptions()
        self._tensorrt_options: dict[str, str] | None = None
        self._session = None
        self._input_name = ""
        self._output_name = ""

    def _activate(self) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        wanted = [PROVIDERS[p] for p in self.providers]
        if len(wanted) > 1:
            _preload_cuda_libraries(ort)
        absent = [p for p in wanted if p not in available]
        if absent:
            raise MissingDependency(
                f"ONNX Runtime here lacks {', '.join(absent)} (available: {', '.join(available)}); "
                "install onnxruntime-gpu on a machine with CUDA, or use --providers cpu"
            )
        options = ort.SessionOptions()
        options.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_DISABLE_ALL if self.exact else ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        )
        if self.threads:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        disabled = list(NOT_FOR_TENSORRT_MODELS) if self.target == "tensorrt" else []
        proto = read_onnx(self.onnx_path, option="ONNX file")  # refuses unsafe external data before ONNX Runtime reads it
        providers: list = list(wanted)
        if "tensorrt" in self.providers:
            input_name, chw = image_input(proto, self.onnx_path)
            self._tensorrt_options = tensorrt_provider_options(
                self.precision, input_name, chw, sha256_file(self.onnx_path), self.tensorrt
            )
            Path(self._tensorrt_options["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)  # ORT makes one level only
            providers[0] = (PROVIDERS["tensorrt"], self._tensorrt_options)
            _preload_tensorrt()
        try:
            session = ort.InferenceSession(
                str(self.onnx_path),
                sess_options=options,
                providers=providers,
                disabled_optimizers=disabled,
                enable_fallback=0,  # a provider that fails is an error here, not a silent retry on the next one
            )
        except Exception as exc:  # noqa: BLE001 - ORT raises several unrelated types for a bad model
            detail = _ort_error(exc)
            if "tensorrt" in self.providers and re.search(r"tensorrt|EP_FAIL", detail, re.IGNORECASE):
                raise MissingDependency(tensorrt_refusal(ort.__version__, detail)) from None
            raise UserError(f"ONNX Runtime cannot load {self.onnx_path}: {detail}") from None
        started = session.get_providers()
        failed = [p for p in wanted if p not in started]
        if PROVIDERS["tensorrt"] in failed:
            raise MissingDependency(tensorrt_refusal(ort.__version__, "its libraries did not load"))
        if failed:
            raise MissingDependency(
                f"ONNX Runtime could not start {', '.join(failed)} (no GPU or missing CUDA/TensorRT libraries?); "
                "use --providers cpu here"
            )
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1:
            raise UserError(f"{self.onnx_path} has {len(inputs)} inputs; expected one image input")
        self._session = session
        self._input_name = inputs[0].name
        self._output_name = outputs[0].name

    def _deactivate(self) -> None:
        self._session = None

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run([self._output_name], {self._input_name: batch})[0]

    def describe(self) -> dict[str, object]:
        import onnxruntime as ort

        return {
            "onnxruntime": ort.__version__,
            "providers": [PROVIDERS[p] for p in self.providers],
            "threads": self.threads,
            "path": str(self.onnx_path),
            **({"graph_optimization": "disabled (exact ONNX semantics)"} if self.exact else {}),
            **({"disabled_optimizers": list(NOT_FOR_TENSORRT_MODELS)} if self.target == "tensorrt" and not self.exact else {}),
            **({"tensorrt_options": dict(self._tensorrt_options)} if self._tensorrt_options else {}),
            **({"int8_compute": SIMULATED_INT8} if self.simulated_int8 else {}),
        }

    @property
    def simulated_int8(self) -> bool:
        """An INT8 (Q/DQ) model on the CUDA provider: INT8 numerics, FP32 kernels."""
        return self.precision == "int8" and self.providers[0] == "cuda"


def _preload_tensorrt() -> None:
    """Load TensorRT's libraries if the `tensorrt` wheels are installed (ONNX Runtime's TensorRT provider links
    libnvinfer by name and does not know the wheels' folder); any failure is left for ONNX Runtime to report."""
    import contextlib

    with contextlib.suppress(Exception):
        import tensorrt  # noqa: F401


def exact_runner(onnx_path: Path, precision: str, target: str | None, threads: int | None = None) -> OrtRunner:
    """The runner of a model's exact semantics: its reference accuracy (ONNX Runtime's CPU EP, no graph optimizations).

    Without fused kernels, the result does not depend on the CPU's INT8 instructions (no 16-bit saturation, no
    VNNI): Q/DQ round and clip as the spec says, and the float ops between them run in FP32, as TensorRT's
    INT8 kernels accumulate in int32 and rescale in float.
    """
    return OrtRunner(onnx_path, f"{Path(onnx_path).name} (exact)", precision, target, threads=threads, exact=True)


def describe_onnx(path: Path) -> tuple[str, str | None]:
    """(precision, target) of an ONNX file: from its resnet-deploy sidecar, else from the graph itself."""
    import json

    import onnx

    from ..artifacts import sidecar_path

    path = Path(path)
    proto = read_onnx(path)  # checked even when a sidecar describes it
    side = sidecar_path(path)
    if side.is_file():
        try:
            meta = json.loads(side.read_text(encoding="utf-8"))
            return str(meta["precision"]), meta.get("target")
        except (json.JSONDecodeError, KeyError, UnicodeDecodeError, TypeError):
            pass  # fall through to the graph
    ops = {node.op_type for node in proto.graph.node}
    if "QuantizeLinear" in ops or "DequantizeLinear" in ops:
        return "int8", None
    if any(init.data_type == onnx.TensorProto.FLOAT16 for init in proto.graph.initializer):
        return "fp16", None
    return "fp32", None


def onnx_input_shape(path: Path) -> tuple[int, int, int]:
    """(C, H, W) of the model's image input."""
    return image_input(read_onnx(path), path)[1]


def image_input(proto, path: Path) -> tuple[str, tuple[int, int, int]]:
    """(name, (C, H, W)) of the one image input of an ONNX ModelProto read from `path`."""
    initializers = {init.name for init in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise UserError(f"--onnx {path} has {len(inputs)} inputs; expected one image input")
    dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or not all(dims[1:]):
        raise UserError(f"--onnx {path}: input shape {dims} is not (N, C, H, W) with fixed C, H, W")
    return inputs[0].name, (dims[1], dims[2], dims[3])


class OnnxRuntimeKind(EngineKind):
    """Every ONNX model on ONNX Runtime, on the execution providers of `OrtOptions` (`onnxruntime-cuda-...` when a
    GPU provider comes first); its TensorRT provider gets the batch profile of the timed batch sizes."""

    name = "onnxruntime"
    title = "ONNX Runtime"
    options_type = OrtOptions
    cpu_runtime = True

    def available(self) -> str | None:
        try:
            import onnxruntime  # noqa: F401
        except Exception as exc:  # noqa: BLE001 - ImportError, or an OSError from its native libraries
            return f"ONNX Runtime is not installed here (no importable `onnxruntime` module: {type(exc).__name__})"
        return None

    def _plan(self, model: Model, settings: EngineSettings) -> list[EngineSpec]:
        options = self.options(settings)
        profile = ort_tensorrt_options(settings.batch_sizes, settings.largest_batch, settings.opt_batch).profile
        return [self.spec(model, settings, backend=ort_backend_label(options.providers), profile=profile)]

    def _runner(self, spec: EngineSpec) -> OrtRunner:
        tensorrt = OrtTensorrtOptions(profile=spec.profile)
        return OrtRunner(spec.file, spec.name, spec.precision, spec.target, spec.options.providers, spec.threads, tensorrt)
