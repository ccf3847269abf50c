"""FP32 ONNX + calibrated ranges -> INT8 Q/DQ ONNX, one recipe per target.

Both quantizers receive the ranges computed from our one statistics pass; neither calibrates itself:

- `onnxruntime` (the CPU engine): ONNX Runtime's `QDQQuantizer` (what `quantize_static` runs after
  its calibration) with the ranges as `TensorsData`: activations uint8 asymmetric, weights int8
  symmetric per channel: the U8S8 recipe ONNX Runtime runs fast on x86. The weights' width depends on
  the CPU the model is for (`--cpu`, default: this machine's kind; isa.py): 8 bits for CPUs with VNNI
  (and ARM), 7 bits (`reduce_range`) for x86 without VNNI, whose U8S8 kernels sum pairs of products in
  16 bits and saturate with 8-bit weights (ONNX Runtime's documented remedy; same kernels, same speed).
  The classifier's output stays FP32 (quantizing logits only costs accuracy).
- `tensorrt`: ModelOpt's ONNX quantizer (`modelopt.onnx.quantization.quantize`), which places Q/DQ the
  way TensorRT fuses it (residual Add: the shortcut input quantized, not the conv side) with symmetric
  int8 everywhere (zero points 0). Our scales reach it as a calibration cache (TensorRT's format), and
  its steps run without its own calibration (`modelopt_worker.quantize_with_scales`: the same output as
  `quantize(calibration_cache_path=...)`, which calibrates anyway); every activation scale of the result
  is checked to be ours.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import enum
import io
import json
import logging
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import OnnxArtifact, write_artifact
from ..errors import CheckFailed
from ..files import future_result, signals_deferred
from ..isa import CpuKind, host_isa
from ..options import Target
from .calibrate import Calibration
from .graph import (
    QDQ_OPS,
    checked_onnx,
    count_ops,
    derived_artifact,
    excluded_nodes,
    load_onnx,
    producers,
    quantized_nodes,
    shape_inferred,
)

TRT_CACHE_HEADER = "TRT-8501-EntropyCalibration2"


@contextlib.contextmanager
def captured_output() -> Iterator[io.StringIO]:
    """Keep a library's prints and log lines off our stdout/stderr (ModelOpt logs to stdout).

    Logging up to ERROR is switched off meanwhile (ModelOpt's handlers hold the real stdout);
    what is printed is kept in the buffer for error messages.
    """
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    root = logging.getLogger()
    root.addHandler(handler)
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            yield buffer
    finally:
        logging.disable(previous)
        root.removeHandler(handler)


class OrtWeights(enum.StrEnum):
    """The weights of an onnxruntime-target model (activations are uint8 asymmetric in every recipe)."""

    INT8 = "int8"  # symmetric per channel, 8 bits: U8S8 for CPUs with VNNI (and ARM)
    INT8_7BIT = "int8-7bit"  # symmetric per channel on [-64, 64] (reduce_range): U8S8 without saturation on any x86
    UINT8 = "uint8"  # asymmetric per channel: U8U8, ONNX Runtime's other remedy (its U8U8 kernels widen to 16 bits)

    @property
    def description(self) -> str:
        return {
            "int8": "int8 symmetric per channel",
            "int8-7bit": "int8 symmetric per channel, 7 bits (reduce_range: no U8S8 saturation on x86 without VNNI)",
            "uint8": "uint8 asymmetric per channel (U8U8)",
        }[self.value]


WEIGHTS_FOR_CPU = {CpuKind.VNNI: OrtWeights.INT8, CpuKind.NO_VNNI: OrtWeights.INT8_7BIT}


def resolve_cpu(cpu: CpuKind | None) -> dict[str, str]:
    """The CPU an onnxruntime-target model is made for: `cpu` (--cpu), or this machine's kind when None."""
    host = host_isa()
    kind = host.kind if cpu is None else cpu
    return {"kind": kind.value, "chosen_by": "host" if cpu is None else "--cpu", "host": host.summary()}


def judged_exactly(target: Target, cpu: CpuKind | None) -> bool:
    """Whether a model of `target` made for `cpu` is judged here by its exact semantics (its reference accuracy)
    rather than by ONNX Runtime as it runs on this machine.

    A tensorrt-target model always: TensorRT accumulates in int32, so a CPU kernel's saturation is not the model's.
    An onnxruntime-target model when it is made for another kind of CPU than this one: this CPU's kernels are
    not the ones it will run on.
    """
    return target is Target.TENSORRT or (cpu is not None and cpu is not host_isa().kind)


def _quantize_onnxruntime(
    source: Path, calibration: Calibration, excluded: list[str], output: Path, weights: OrtWeights = OrtWeights.INT8
) -> None:
    import onnx
    from onnxruntime.quantization import QDQQuantizer, QuantType
    from onnxruntime.quantization.calibrate import CalibrationMethod as OrtMethod
    from onnxruntime.quantization.calibrate import TensorData, TensorsData
    from onnxruntime.quantization.quant_utils import add_infer_metadata, update_opset_version
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    ranges = TensorsData(
        OrtMethod.MinMax,
        {name: TensorData(lowest=np.float32(r.low), highest=np.float32(r.high)) for name, r in calibration.ranges.items()},
    )
    model = onnx.ModelProto.FromString(shape_inferred(source))
    add_infer_metadata(model)  # as quantize_static's load_model_with_shape_infer
    model = update_opset_version(model, QuantType.QInt8)
    signed = weights is not OrtWeights.UINT8
    weight_type = QuantType.QInt8 if signed else QuantType.QUInt8
    quantizer = QDQQuantizer(
        model,
        True,  # per_channel
        weights is OrtWeights.INT8_7BIT,  # reduce_range: weights on [-64, 64]; activations keep 8 bits
        weight_type,  # weights
        QuantType.QUInt8,  # activations
        ranges,
        [],  # nodes_to_quantize: all
        list(excluded),
        sorted((set(QDQRegistry) | set(QLinearOpsRegistry)) - FLOAT_NORMALIZATIONS),  # quantize_static's default op types
        {
            "ActivationSymmetric": False,
            "WeightSymmetric": signed,
            "OpTypesToExcludeOutputQuantization": ["Gemm"],
            "TensorQuantOverrides": conv_weight_overrides(model, weight_type, weights is OrtWeights.INT8_7BIT),
        },
    )
    quantizer.quantize_model()
    read_float_inputs(quantizer.model.model, excluded, load_onnx(source))
    quantizer.model.save_model_to_file(str(output), False)


def conv_weight_overrides(model, weight_type, reduce_range: bool) -> dict[str, list[dict[str, Any]]]:
    """The per-channel scale and zero point of every Conv weight as ONNX Runtime's QDQ quantizer computes them,
    as its `TensorQuantOverrides` (its extra option that takes them instead of computing them).

    The quantizer computes them one output channel at a time in Python (`compute_data_quant_params`: on
    ResNet-50, 26,560 channels and most of its three seconds); here the same formula runs on all channels
    at once: per-channel weights are symmetric, rmin/rmax include 0, scale = float32(float64(2 * absmax) /
    (qmax - qmin)), zero point round((qmin + qmax) / 2), and (1, 0) below float32's smallest normal scale.
    Tests check that the model written with them is the one written without them, byte for byte.
    """
    from onnx import numpy_helper
    from onnxruntime.quantization.quant_utils import get_qmin_qmax_for_qType

    qmin, qmax = get_qmin_qmax_for_qType(weight_type.tensor_type, reduce_range, symmetric=True)
    zero_point = np.array(np.round((qmin + qmax) / np.array(2.0, dtype=np.float64)), dtype=qmin.dtype)
    steps = np.array(qmax, dtype=np.float64) - np.array(qmin, dtype=np.float64)
    initializers = {i.name: i for i in model.graph.initializer}
    overrides: dict[str, list[dict[str, Any]]] = {}
    for node in model.graph.node:
        name = node.input[1] if node.op_type == "Conv" and len(node.input) > 1 else ""
        if name not in initializers or name in overrides:
            continue
        weight = numpy_helper.to_array(initializers[name])
        if weight.dtype != np.float32 or weight.ndim < 3 or weight.size == 0:
            continue
        per_channel = weight.reshape(weight.shape[0], -1)
        low = np.minimum(per_channel.min(axis=1), np.float32(0))
        high = np.maximum(per_channel.max(axis=1), np.float32(0))
        absmax = np.maximum(np.abs(low), np.abs(high))
        scale = (absmax - (-absmax)).astype(np.float64) / steps
        tiny = scale < np.finfo(np.float32).tiny
        scales = np.where(tiny, 1.0, scale).astype(np.float32)
        zero_points = np.where(tiny, np.array(0, dtype=qmin.dtype), zero_point).astype(qmin.dtype)
        overrides[name] = [{"scale": s, "zero_point": z} for s, z in zip(scales, zero_points)]
        overrides[name][0]["axis"] = 0
    return overrides


# Left in float for the onnxruntime target: ONNX Runtime's CPU EP has no integer kernels for them (Q/DQ around them
# buys nothing), and its quantizer cannot quantize a normalization scale shared by several nodes, which is how
# GroupNorm exports (Reshape -> InstanceNormalization with one shared scale of ones -> Reshape -> Mul -> Add; resnet*_gn).
FLOAT_NORMALIZATIONS = frozenset({"InstanceNormalization", "LayerNormalization", "GroupNormalization"})

REMOVABLE_ACTIVATIONS = frozenset({"Relu", "Clip"})  # ONNX Runtime's quantizer folds these into the Q range


def read_float_inputs(model, excluded: Sequence[str], original) -> list[str]:
    """Excluded nodes read the FP32 tensors themselves, not their quantize-dequantize round trip; returns them.

    ONNX Runtime's QDQ quantizer leaves an excluded node's weights in FP32 but still feeds it the
    dequantized INT8 copy of each activation (the producer's output quantization), so "excluded" would
    keep most of the node's error. Here each such input is wired to the tensor the QuantizeLinear read,
    as ModelOpt's recipe (Q/DQ on quantized nodes' inputs only) and NNCF's ignored scope do; Q/DQ pairs
    that no node reads any more are removed. The quantizer also removed each Relu/Clip after a quantized
    node (the Q range clips instead) and gave its output name to the node before it: where an excluded
    node now reads such a tensor, a copy of the activation from `original` (the FP32 model) is put back.

    The node reads no DequantizeLinear: ONNX Runtime's WeightBiasQuantization optimizer (which quantizes
    the FP32 weights of a Conv/Gemm fed by a DequantizeLinear when a session loads) leaves it in FP32,
    and `graph.quantized_nodes` does not count it.
    """
    wanted = set(excluded)
    made_by, made_by_before = producers(model), producers(original)
    initializers = {i.name for i in model.graph.initializer}
    originals = {i.name: i for i in original.graph.initializer}
    restored: dict[str, str] = {}  # tensor -> its activation put back
    nodes, rewired = [], []
    for node in model.graph.node:
        if node.name in wanted:
            for index, name in enumerate(node.input):
                dq = made_by.get(name)
                q = made_by.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
                if q is None or q.op_type != "QuantizeLinear":
                    continue
                tensor = q.input[0]
                before, now = made_by_before.get(tensor), made_by.get(tensor)
                folded = before is not None and before.op_type in REMOVABLE_ACTIVATIONS
                if folded and (now is None or now.op_type != before.op_type):
                    if tensor not in restored:
                        restored[tensor] = f"{tensor}_fp32"
                        activation = copy.deepcopy(before)
                        activation.name = f"{before.name}_fp32"
                        activation.input[0], activation.output[0] = tensor, restored[tensor]
                        for extra in activation.input[1:]:  # Clip's min / max
                            if extra and extra not in initializers and extra in originals:
                                model.graph.initializer.append(originals[extra])
                                initializers.add(extra)
                        nodes.append(activation)
                    tensor = restored[tensor]
                node.input[index] = tensor
                rewired.append(node.name)
        nodes.append(node)
    while True:  # drop Q/DQ nodes nothing reads (a DQ first, then the Q that fed only it)
        read = {name for node in nodes for name in node.input} | {o.name for o in model.graph.output}
        kept = [n for n in nodes if n.op_type not in QDQ_OPS or any(o in read for o in n.output)]
        if len(kept) == len(nodes):
            break
        nodes = kept
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return sorted(set(rewired))


def write_trt_cache(calibration: Calibration, path: Path) -> None:
    """TensorRT's calibration cache: a header line, then `tensor: <scale as big-endian float32 hex>`."""
    lines = [TRT_CACHE_HEADER] + [f"{name}: {struct.pack('!f', r.scale).hex()}" for name, r in calibration.ranges.items()]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


class ModelOptSession:
    """A child Python that runs ModelOpt's quantizer (`modelopt_worker`) for any number of jobs.

    ModelOpt runs in its own process because it rewrites ONNX Runtime's quantizer registries
    process-wide (it removes Relu, Reshape, ... from QDQRegistry), which would change every later
    onnxruntime-target quantization here; one process serves many jobs because importing ModelOpt takes
    seconds and a mixed-precision search or `layers` quantizes the same model many times.
    """

    def __init__(self) -> None:
        self._process: subprocess.Popen | None = None
        self._log = None
        self._unread = 0  # replies of jobs sent without waiting (prepare)

    def __enter__(self) -> "ModelOptSession":
        self._log = tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace")  # a file: never blocks the child
        self._process = subprocess.Popen(
            [sys.executable, "-m", "resnet_deploy.calibration.modelopt_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        return self

    def __exit__(self, *exc_info: object) -> None:
        process, self._process = self._process, None
        if process is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def wait_ready(self) -> None:
        """Return once the worker has imported ModelOpt (it starts doing so when the session opens)."""
        self.run({"ping": True})

    def prepare(self, source: Path, input_name: str, excluded: Sequence[str], example: np.ndarray) -> None:
        """Have the worker prepare now what a later job for this model does before it reads the scales (ModelOpt's
        graph preparation, the nodes to quantize, shape inference): it runs while the caller calibrates."""
        self._send({"prepare": True, **_graph_job(source, input_name, excluded), "example_shape": [1, *example.shape[1:]]})
        self._unread += 1

    def run(self, job: dict) -> None:
        self._send(job)
        for _ in range(self._unread):  # a prepare job's reply is always ok
            self._reply()
        self._unread = 0
        reply = self._reply()
        if not reply.get("ok"):
            raise CheckFailed(f"ModelOpt INT8 quantization failed: {reply.get('error')}")

    def _send(self, job: dict) -> None:
        if self._process is None:
            raise RuntimeError("ModelOptSession is not active: use it inside a `with` block")
        with contextlib.suppress(OSError):  # a worker that ended: _reply says so
            self._process.stdin.write(json.dumps(job) + "\n")
            self._process.stdin.flush()

    def _reply(self) -> dict:
        try:
            line = self._process.stdout.readline()
        except OSError:
            line = ""
        if not line:
            raise CheckFailed(f"ModelOpt INT8 quantization failed: its worker process ended ({self._last_log_line()})")
        return json.loads(line)

    def _last_log_line(self) -> str:
        self._log.seek(0)
        lines = [line for line in self._log.read().splitlines() if line.strip()]
        return lines[-1][:300] if lines else f"exit code {self._process.poll()}"


def _graph_job(source: Path, input_name: str, excluded: Sequence[str]) -> dict:
    """The fields of a worker job that name its graph (a prepare job and its quantize job share them)."""
    # ModelOpt reads each entry as a regex matched with re.match (a prefix match): 'node_conv2d_1' would also
    # exclude node_conv2d_10..19. Exact names only.
    return {"onnx_path": str(source), "input_name": input_name, "nodes_to_exclude": [f"^{re.escape(n)}$" for n in excluded]}


def _quantize_tensorrt(
    source: Path,
    calibration: Calibration,
    excluded: list[str],
    input_name: str,
    example: np.ndarray,
    outputs: dict[str, Path],
    session: ModelOptSession,
) -> None:
    """ModelOpt's quantizer -> outputs["fp32"] (FP32 elsewhere) and, if asked, outputs["fp16"] (FP16 elsewhere)."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="resnet-deploy-modelopt-") as tmp:
        job = {
            **_graph_job(source, input_name, excluded),
            "cache": str(Path(tmp) / "calib.cache"),
            "example": str(Path(tmp) / "example.npy"),
            "output_path": str(Path(tmp) / "model.onnx"),
            "fp16_output_path": str(Path(tmp) / "model.fp16.onnx") if "fp16" in outputs else None,
        }
        write_trt_cache(calibration, Path(job["cache"]))
        np.save(job["example"], np.ascontiguousarray(example[:1], dtype=np.float32))
        session.run(job)
        written = {"fp32": job["output_path"], "fp16": job["fp16_output_path"]}
        for high, path in outputs.items():
            _check_tensorrt_graph(onnx.load(written[high]), calibration)
            shutil.move(written[high], path)


def _check_tensorrt_graph(model, calibration: Calibration) -> None:
    """TensorRT needs zero points of 0; every activation scale must be one of ours (not ModelOpt's 1-image calibration)."""
    from onnx import numpy_helper

    initializers = {i.name: i for i in model.graph.initializer}
    made_by = producers(model)
    for node in model.graph.node:
        if node.op_type not in QDQ_OPS:
            continue
        if len(node.input) > 2 and node.input[2] in initializers:
            if np.any(numpy_helper.to_array(initializers[node.input[2]]) != 0):
                raise CheckFailed(
                    f"tensorrt-target INT8 ONNX: {node.name} has a non-zero zero point; TensorRT needs symmetric Q/DQ"
                )
        tensor = node.input[0]
        if node.op_type == "QuantizeLinear" and tensor not in initializers:
            scale = numpy_helper.to_array(initializers[node.input[1]]).reshape(-1)[0]
            while tensor not in calibration.ranges and (cast := made_by.get(tensor)) is not None and cast.op_type == "Cast":
                tensor = cast.input[0]  # high_precision_dtype fp16 puts Casts in front of some Q nodes
            expected = calibration.ranges.get(tensor)
            tolerance = 1e-3 if scale.dtype == np.float16 else 1e-6
            if expected is None or not np.isclose(float(scale), expected.scale, rtol=tolerance):
                raise CheckFailed(f"tensorrt-target INT8 ONNX: the scale of {tensor!r} is not the calibrated one")


def recipe(target: Target, cpu: dict[str, str] | None = None) -> dict[str, object]:
    """What a model's sidecar says about its recipe; `cpu` (resolve_cpu) for the onnxruntime target."""
    if target is Target.TENSORRT:
        return {
            "tool": "modelopt.onnx.quantization.quantize",
            "activations": "int8 symmetric per tensor",
            "weights": "int8 symmetric per channel",
        }
    cpu = cpu or resolve_cpu(None)
    return {
        "tool": "onnxruntime.quantization.QDQQuantizer",
        "activations": "uint8 asymmetric per tensor",
        "weights": WEIGHTS_FOR_CPU[CpuKind(cpu["kind"])].description,
        "cpu": cpu,
    }


def make_int8(
    fp32: OnnxArtifact,
    calibration: Calibration,
    target: Target,
    excluded: Sequence[str],
    example: np.ndarray,
    folder: Path,
    fp16: bool = False,
    session: ModelOptSession | None = None,
    cpu: CpuKind | None = None,
    weights: OrtWeights | None = None,
) -> dict[str, Path]:
    """Quantize with `excluded` nodes (exact names) left in higher precision, into `folder`: {'fp32': path}
    (FP32 between the quantized layers) plus {'fp16': path} (FP16 there; tensorrt target only) if `fp16`.
    `cpu`: the kind of CPU an onnxruntime-target model is for (None: this machine's), which chooses its weights
    (WEIGHTS_FOR_CPU); `weights` chooses them instead, e.g. the U8U8 recipe no `--cpu` makes (benchmarks/).

    Ranges come from `calibration` as they are: no pass over any image. No sidecar, no checker: the
    search's candidates; `write_int8` turns the chosen files into artifacts.
    """
    if fp16 and target is not Target.TENSORRT:
        raise ValueError("an FP16-elsewhere INT8 model is made for the tensorrt target only")
    if weights is not None and target is not Target.ONNXRUNTIME:
        raise ValueError("the weights recipe is the onnxruntime target's")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    made = {"fp32": folder / "model.fp32.onnx", **({"fp16": folder / "model.fp16.onnx"} if fp16 else {})}
    if target is Target.ONNXRUNTIME:
        weights = weights or WEIGHTS_FOR_CPU[CpuKind(resolve_cpu(cpu)["kind"])]
        _quantize_onnxruntime(fp32.path, calibration, list(excluded), made["fp32"], weights)
    elif session is not None:
        _quantize_tensorrt(fp32.path, calibration, list(excluded), fp32.input_name, example, made, session)
    else:
        with ModelOptSession() as own:
            _quantize_tensorrt(fp32.path, calibration, list(excluded), fp32.input_name, example, made, own)
    return made


@dataclass(frozen=True)
class Meanwhile:
    """Files being made in another thread; `result()` waits for them, and a Ctrl-C still stops the wait."""

    future: concurrent.futures.Future

    def result(self) -> dict[str, Path]:
        return future_result(self.future)


@contextlib.contextmanager
def tensorrt_int8_meanwhile(
    fp32: OnnxArtifact,
    calibration: Calibration,
    excluded: Sequence[str],
    example: np.ndarray,
    fp16: bool,
    session: ModelOptSession,
) -> Iterator[Meanwhile]:
    """`make_int8` for the tensorrt target, started now: its files when `result()` is called (in a folder that lives
    as long as the block). The ModelOpt worker process does the work, so the caller's thread makes the
    onnxruntime-target model meanwhile (both quantizers are single-threaded Python: on two cores the pair costs
    about the longer one)."""
    with (
        tempfile.TemporaryDirectory(prefix="resnet-deploy-int8-") as tmp,
        concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="modelopt") as pool,
    ):
        _ = calibration.ranges  # computed here, not by both threads at once
        with signals_deferred():  # never a Ctrl-C inside the executor's locking (see files.future_result)
            future = pool.submit(make_int8, fp32, calibration, Target.TENSORRT, excluded, example, Path(tmp), fp16, session)
        yield Meanwhile(future)


def write_int8(
    fp32: OnnxArtifact,
    calibration: Calibration,
    target: Target,
    made: dict[str, Path],
    path: Path,
    excluded: Sequence[str],
    fp16_path: Path | None = None,
    details: dict | None = None,
    cpu: CpuKind | None = None,
) -> list[OnnxArtifact]:
    """The files of `make_int8` as artifacts at `path` (and `fp16_path`), checked, with their sidecars;
    `details` (e.g. the mixed-precision search) join the sidecar's `quantization`; `cpu` as given to make_int8."""
    artifacts = []
    made_for = recipe(target, resolve_cpu(cpu) if target is Target.ONNXRUNTIME else None)
    for high, final in [("fp32", Path(path)), *([("fp16", Path(fp16_path))] if fp16_path else [])]:

        def produce(tmp_path: Path, high: str = high, final: Path = final) -> OnnxArtifact:
            shutil.copyfile(made[high], tmp_path)
            model = checked_onnx(tmp_path, f"INT8 ONNX for {target}")
            quantization = {
                **calibration.summary(),
                **made_for,
                "high_precision_dtype": high,
                "format": "QDQ",
                "quantized_nodes": len(quantized_nodes(model)),
                "quantize_nodes": count_ops(model, ["QuantizeLinear"]),
                "dequantize_nodes": count_ops(model, ["DequantizeLinear"]),
                "excluded_nodes": list(excluded),
                **(details or {}),
            }
            if fp16_path is not None:
                other = Path(fp16_path) if high == "fp32" else Path(path)
                quantization["same_qdq_as"] = other.name
            return derived_artifact(fp32, model, final, "int8", target.value, {"quantization": quantization})

        artifacts.append(write_artifact(final, produce))
    return artifacts


@dataclass(frozen=True, eq=False)
class Int8Recipe:
    """What every INT8 model of one FP32 model for one target is made from (the arguments `make_int8` and
    `write_int8` share): its calibration, the example image ModelOpt wants, the CPU an onnxruntime-target model is for."""

    fp32: OnnxArtifact
    calibration: Calibration
    target: Target
    example: np.ndarray
    cpu: CpuKind | None = None

    def make(
        self, excluded: Sequence[str], folder: Path, fp16: bool = False, session: ModelOptSession | None = None
    ) -> dict[str, Path]:
        """`make_int8` with `excluded` in higher precision, into `folder`."""
        return make_int8(self.fp32, self.calibration, self.target, excluded, self.example, folder, fp16, session, self.cpu)

    def write(
        self,
        made: dict[str, Path],
        path: Path,
        excluded: Sequence[str],
        fp16_path: Path | None = None,
        details: dict | None = None,
    ) -> list[OnnxArtifact]:
        """`write_int8`: the files `make` made as checked artifacts at `path` (and `fp16_path`)."""
        return write_int8(self.fp32, self.calibration, self.target, made, path, excluded, fp16_path, details, self.cpu)


def quantize_int8(
    fp32: OnnxArtifact,
    calibration: Calibration,
    target: Target,
    path: Path,
    example: np.ndarray,
    exclude_layers: str | None = None,
    fp16_path: Path | None = None,
    session: ModelOptSession | None = None,
    cpu: CpuKind | None = None,
) -> list[OnnxArtifact]:
    """Write the INT8 Q/DQ ONNX for `target` at `path` (FP32 between the quantized layers, so ONNX Runtime's
    CPU EP runs it exactly); return its artifact, plus, for the tensorrt target with `fp16_path`, the
    same Q/DQ model with FP16 between them (ModelOpt's high_precision_dtype='fp16', for TensorRT).

    `example` is one preprocessed image (ModelOpt's API wants calibration data even with a cache).
    """
    excluded = excluded_nodes(load_onnx(fp32.path), exclude_layers)
    recipe = Int8Recipe(fp32, calibration, target, example, cpu)
    with tempfile.TemporaryDirectory(prefix="resnet-deploy-int8-") as tmp:
        return recipe.write(recipe.make(excluded, Path(tmp), fp16_path is not None, session), path, excluded, fp16_path)
