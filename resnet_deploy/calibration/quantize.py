"""FP32 ONNX + calibrated ranges -> INT8 Q/DQ ONNX, one recipe per target.

Both quantizers receive the ranges computed from our one statistics pass; neither calibrates itself:

- `onnxruntime` (the CPU engine): ONNX Runtime's `QDQQuantizer` (what `quantize_static` runs after
  its calibration) with the ranges as `TensorsData`: activations uint8 asymmetric, weights int8
  symmetric per channel: the U8S8 recipe ONNX Runtime runs fast on x86 with VNNI. The classifier's
  output stays FP32 (quantizing logits only costs accuracy).
- `tensorrt`: ModelOpt's ONNX quantizer (`modelopt.onnx.quantization.quantize`), which places Q/DQ the
  way TensorRT fuses it (residual Add: the shortcut input quantized, not the conv side) with symmetric
  int8 everywhere (zero points 0). Our scales reach it through its calibration cache
  (`calibration_cache_path`, TensorRT's cache format); its own calibration runs on a single image with
  the cheap `max` method only because the API needs one, and every activation scale is then replaced
  by ours, which is checked on the result.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..artifacts import OnnxArtifact, write_onnx_artifact
from ..config import Target
from ..errors import CheckFailed
from .calibrate import Calibration
from .graph import QDQ_OPS, checked_onnx, count_ops, derived_artifact, excluded_nodes, load_onnx, producers, quantized_nodes

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


def _quantize_onnxruntime(source: Path, calibration: Calibration, excluded: list[str], output: Path) -> None:
    from onnxruntime.quantization import QDQQuantizer, QuantType
    from onnxruntime.quantization.calibrate import CalibrationMethod as OrtMethod
    from onnxruntime.quantization.calibrate import TensorData, TensorsData
    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer, update_opset_version
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    ranges = TensorsData(
        OrtMethod.MinMax,
        {name: TensorData(lowest=np.float32(r.low), highest=np.float32(r.high)) for name, r in calibration.ranges.items()},
    )
    model = update_opset_version(load_model_with_shape_infer(Path(source)), QuantType.QInt8)
    quantizer = QDQQuantizer(
        model,
        True,  # per_channel
        False,  # reduce_range: VNNI needs no 7-bit weights
        QuantType.QInt8,  # weights
        QuantType.QUInt8,  # activations
        ranges,
        [],  # nodes_to_quantize: all
        list(excluded),
        sorted(set(QDQRegistry) | set(QLinearOpsRegistry)),  # quantize_static's default op types
        {"ActivationSymmetric": False, "WeightSymmetric": True, "OpTypesToExcludeOutputQuantization": ["Gemm"]},
    )
    quantizer.quantize_model()
    quantizer.model.save_model_to_file(str(output), False)


def write_trt_cache(calibration: Calibration, path: Path) -> None:
    """TensorRT's calibration cache: a header line, then `tensor: <scale as big-endian float32 hex>`."""
    lines = [TRT_CACHE_HEADER] + [f"{name}: {struct.pack('!f', r.scale).hex()}" for name, r in calibration.ranges.items()]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _quantize_tensorrt(
    source: Path, calibration: Calibration, excluded: list[str], input_name: str, example: np.ndarray, outputs: dict[str, Path]
) -> None:
    """ModelOpt's quantizer -> outputs["fp32"] (FP32 elsewhere) and, if asked, outputs["fp16"] (FP16 elsewhere).

    ModelOpt runs in a child Python (`modelopt_worker`): it rewrites ONNX Runtime's quantizer registries
    process-wide (it removes Relu, Reshape, ... from QDQRegistry), which would change every later
    onnxruntime-target quantization in this process.
    """
    import json
    import subprocess
    import sys

    import onnx

    with tempfile.TemporaryDirectory(prefix="resnet-deploy-modelopt-") as tmp:
        job = {
            "onnx_path": str(source),
            "cache": str(Path(tmp) / "calib.cache"),
            "example": str(Path(tmp) / "example.npy"),
            "input_name": input_name,
            "nodes_to_exclude": list(excluded),
            "output_path": str(Path(tmp) / "model.onnx"),
            "fp16_output_path": str(Path(tmp) / "model.fp16.onnx") if "fp16" in outputs else None,
        }
        write_trt_cache(calibration, Path(job["cache"]))
        np.save(job["example"], np.ascontiguousarray(example[:1], dtype=np.float32))
        done = subprocess.run(
            [sys.executable, "-m", "resnet_deploy.calibration.modelopt_worker", json.dumps(job)],
            capture_output=True,
            text=True,
        )
        written = {"fp32": job["output_path"], "fp16": job["fp16_output_path"]}
        if done.returncode != 0 or not all(Path(written[k]).is_file() for k in outputs):
            lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
            raise CheckFailed(f"ModelOpt INT8 quantization failed: {lines[-1][:300] if lines else f'exit {done.returncode}'}")
        for high, path in outputs.items():
            model = onnx.load(written[high])
            _check_tensorrt_graph(model, calibration)
            onnx.save(model, str(path))


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


def quantize_int8(
    fp32: OnnxArtifact,
    calibration: Calibration,
    target: Target,
    path: Path,
    example: np.ndarray,
    exclude_layers: str | None = None,
    fp16_path: Path | None = None,
) -> list[OnnxArtifact]:
    """Write the INT8 Q/DQ ONNX for `target` at `path` (FP32 between the quantized layers, so ONNX Runtime's
    CPU EP runs it exactly); return its artifact, plus, for the tensorrt target with `fp16_path`, the
    same Q/DQ model with FP16 between them (ModelOpt's high_precision_dtype='fp16', for TensorRT).

    `example` is one preprocessed image (ModelOpt's API wants calibration data even with a cache).
    """

    excluded = excluded_nodes(load_onnx(fp32.path), exclude_layers)
    if fp16_path is not None and target is not Target.TENSORRT:
        raise ValueError("an FP16-elsewhere INT8 model is made for the tensorrt target only")
    recipes = {
        Target.ONNXRUNTIME: {
            "tool": "onnxruntime.quantization.QDQQuantizer",
            "activations": "uint8 asymmetric per tensor",
            "weights": "int8 symmetric per channel",
        },
        Target.TENSORRT: {
            "tool": "modelopt.onnx.quantization.quantize",
            "activations": "int8 symmetric per tensor",
            "weights": "int8 symmetric per channel",
        },
    }
    with tempfile.TemporaryDirectory(prefix="resnet-deploy-int8-") as tmp:
        made = {"fp32": Path(tmp) / "fp32.onnx", **({"fp16": Path(tmp) / "fp16.onnx"} if fp16_path else {})}
        if target is Target.ONNXRUNTIME:
            _quantize_onnxruntime(fp32.path, calibration, excluded, made["fp32"])
        else:
            _quantize_tensorrt(fp32.path, calibration, excluded, fp32.input_name, example, made)
        artifacts = []
        for high, final in [("fp32", Path(path)), *([("fp16", Path(fp16_path))] if fp16_path else [])]:

            def produce(tmp_path: Path, high: str = high, final: Path = final) -> OnnxArtifact:
                shutil.copyfile(made[high], tmp_path)
                model = checked_onnx(tmp_path, f"INT8 ONNX for {target}")
                quantization = {
                    **calibration.summary(),
                    **recipes[target],
                    "high_precision_dtype": high,
                    "format": "QDQ",
                    "quantized_nodes": len(quantized_nodes(model)),
                    "quantize_nodes": count_ops(model, ["QuantizeLinear"]),
                    "dequantize_nodes": count_ops(model, ["DequantizeLinear"]),
                    "excluded_nodes": excluded,
                }
                if fp16_path is not None:
                    other = Path(fp16_path) if high == "fp32" else Path(path)
                    quantization["same_qdq_as"] = other.name
                return derived_artifact(fp32, model, final, "int8", target.value, {"quantization": quantization})

            artifacts.append(write_onnx_artifact(final, produce))
    return artifacts
