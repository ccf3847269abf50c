"""FP32 ONNX -> FP16 ONNX with ModelOpt AutoCast, overflow-prone nodes kept in FP32.

AutoCast keeps a node in FP32 when a value it reads or writes exceeds `data_max` in magnitude (FP16's
step is 0.5 at 512) or a weight exceeds `init_max`. Its own check runs the model once more on its own
inputs; here the magnitudes come from the calibration statistics already measured (every node input
and output of the calibration images), those nodes are handed to AutoCast as `nodes_to_exclude`, and
AutoCast's own reference run is switched off (`data_max=inf`); `init_max` stays AutoCast's.

A tensor read only by a Relu counts with the Relu's output: the values the Relu sets to zero cannot
overflow anything downstream.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..artifacts import OnnxArtifact, write_artifact
from ..errors import CheckFailed
from .calibrate import Calibration
from .graph import checked_onnx, derived_artifact, excluded_nodes, load_onnx
from .quantize import captured_output

DATA_MAX = 512.0  # modelopt.onnx.autocast.convert.DEFAULT_DATA_MAX


def overflow_nodes(model, calibration: Calibration, data_max: float = DATA_MAX) -> dict[str, float]:
    """Nodes with an input or output above `data_max` in magnitude on the calibration set -> that magnitude."""
    found: dict[str, float] = {}
    for node in model.graph.node:
        magnitudes = [calibration.statistics.absmax(name) for name in (*node.input, *node.output) if name]
        peak = max((m for m in magnitudes if m is not None), default=0.0)
        if peak > data_max:
            found[node.name] = peak
    return found


def _fp16_nodes(model) -> int:
    """Nodes that compute in FP16 (any FP16 output), Casts not counted."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*inferred.graph.value_info, *inferred.graph.output]}
    return sum(
        1
        for node in model.graph.node
        if node.op_type != "Cast" and any(types.get(o) == onnx.TensorProto.FLOAT16 for o in node.output)
    )


def convert_fp16(fp32: OnnxArtifact, calibration: Calibration, path: Path, exclude_layers: str | None = None) -> OnnxArtifact:
    """Write the FP16 ONNX (inputs and outputs stay FP32) at `path` with its sidecar."""
    import onnx

    source = load_onnx(fp32.path)
    excluded = excluded_nodes(source, exclude_layers)
    overflow = overflow_nodes(source, calibration)
    keep = sorted(set(excluded) | set(overflow))

    def produce(tmp: Path) -> OnnxArtifact:
        from modelopt.onnx.autocast import convert_to_mixed_precision
        from modelopt.onnx.autocast.convert import DEFAULT_INIT_MAX

        with captured_output():
            try:
                model = convert_to_mixed_precision(
                    onnx_path=str(fp32.path),
                    low_precision_type="fp16",
                    nodes_to_exclude=[f"^{re.escape(name)}$" for name in keep],
                    data_max=np.inf,  # the calibration statistics decided (overflow_nodes); no second run
                    init_max=DEFAULT_INIT_MAX,
                    keep_io_types=True,
                )
            except Exception as exc:  # noqa: BLE001 - AutoCast raises many types; the stage failed either way
                raise CheckFailed(f"ModelOpt AutoCast FP16 conversion failed: {type(exc).__name__}: {str(exc)[:200]}") from exc
        onnx.save(model, str(tmp))
        model = checked_onnx(tmp, "FP16 ONNX")
        details = {
            "fp16": {
                **{k: v for k, v in calibration.summary().items() if k not in ("method", "percentile")},  # maxima only
                "tool": "modelopt.onnx.autocast.convert_to_mixed_precision",
                "keep_io_types": True,
                "data_max": DATA_MAX,
                "init_max": float(DEFAULT_INIT_MAX),
                "fp16_nodes": _fp16_nodes(model),
                "fp32_nodes": keep,
                "overflow_nodes": {name: round(value, 3) for name, value in overflow.items()},
                "excluded_nodes": excluded,
            }
        }
        return derived_artifact(fp32, model, path, "fp16", None, details)

    return write_artifact(path, produce)
