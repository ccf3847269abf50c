"""ONNX Runtime engine: an ONNX file run by an InferenceSession (CPU by default; CUDA/TensorRT on request)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..artifacts import read_onnx
from ..errors import MissingDependency, UserError
from .base import Runner

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def parse_providers(text: str, option: str = "--providers") -> tuple[str, ...]:
    """'cuda,cpu' -> ('cuda', 'cpu'); the CPU provider is always last as the fallback."""
    names = []
    for part in (p.strip().lower() for p in text.split(",") if p.strip()):
        if part not in PROVIDERS:
            raise UserError(f"{option}: unknown execution provider {part!r}; valid: {', '.join(PROVIDERS)}")
        if part not in names:
            names.append(part)
    if "cpu" in names:
        names.remove("cpu")
    return (*names, "cpu")


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
        exact: bool = False,
    ) -> None:
        super().__init__(name, precision, target)
        self.onnx_path = Path(onnx_path)
        self.providers = ("cpu",) if exact else providers
        self.threads = threads
        self.exact = exact
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
        read_onnx(self.onnx_path, option="ONNX file")  # refuses unsafe external data before ONNX Runtime reads it
        try:
            session = ort.InferenceSession(
                str(self.onnx_path), sess_options=options, providers=wanted, disabled_optimizers=disabled
            )
        except Exception as exc:  # noqa: BLE001 - ORT raises several unrelated types for a bad model
            detail = str(exc).splitlines()[0][:200]
            raise UserError(f"ONNX Runtime cannot load {self.onnx_path}: {detail}") from None
        started = session.get_providers()
        failed = [p for p in wanted if p not in started]
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
        }


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
    proto = read_onnx(path)
    initializers = {init.name for init in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise UserError(f"--onnx {path} has {len(inputs)} inputs; expected one image input")
    dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or not all(dims[1:]):
        raise UserError(f"--onnx {path}: input shape {dims} is not (N, C, H, W) with fixed C, H, W")
    return (dims[1], dims[2], dims[3])
