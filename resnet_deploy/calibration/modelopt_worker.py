"""Runs ModelOpt's ONNX INT8 quantizer in its own Python process (see quantize.ModelOptSession).

    python -m resnet_deploy.calibration.modelopt_worker      # then one JSON job a line on stdin

One process serves many jobs (importing ModelOpt takes seconds, so it is imported as the process starts,
while the parent still calibrates; a mixed-precision search or `layers` quantizes the same model many
times). Each job writes the Q/DQ model with FP32 elsewhere at output_path and, when fp16_output_path is
given, the same model with FP16 elsewhere: the step `quantize(high_precision_dtype="fp16")` runs at its
end (`convert_to_f16` with I/O types kept), so nodes_to_exclude run in FP16 there. Each job gets one
reply line on the original stdout: {"ok": true} or {"ok": false, "error": "<one line>"}. Everything else
anything prints (Python or C code) goes to stderr, so the reply channel carries replies only. A `prepare` job
(the graph fields of a later job and the example's shape) does that job's scale-independent part now, while
the parent still calibrates (`Prepared`); its reply is always ok (a failure shows in the job itself).

The scales are given (a TensorRT calibration cache), so ModelOpt's own calibration has nothing to do.
`modelopt.onnx.quantization.quantize` runs it anyway (an ONNX Runtime session over the calibration
data), and around it shape inference three times (the first one rewrites the input file in place),
an inference pass that looks for GEMV MatMuls, the ONNX checker twice and several intermediate files:
two thirds of its time on a ResNet-50. `quantize_with_scales` runs the steps of that function that
shape the output, in its order and with its own functions (graph preparation, Q/DQ placement,
ONNX Runtime's QDQ quantizer as ModelOpt patches and configures it, its post-processing and the scale
replacement from the cache), and leaves out what only the calibration needs. Its output is the same
model (tests compare it with `quantize`'s, node by node and value by value). Graphs with MatMul nodes
(where ModelOpt's GEMV and attention rules run inference) take the full `quantize` path.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Any

from .quantize import captured_output, conv_weight_overrides

INT8_MIN_OPSET = 19  # modelopt.onnx.utils.QDQ_PRECISION_MIN_OPSET["int8"]: Q/DQ with FP16 scales
MAX_IR_VERSION = 10  # modelopt.onnx.trt_utils.MAX_IR_VERSION


def import_modelopt() -> None:
    """Import what the jobs use (seconds: ModelOpt pulls in ONNX Runtime's quantization tools, sympy, torch)."""
    with captured_output():
        import modelopt.onnx.autocast  # noqa: F401
        import modelopt.onnx.quantization  # noqa: F401


def quantize_full(job: dict) -> None:
    """`modelopt.onnx.quantization.quantize` itself, its calibration on one image (the scales then come from the cache)."""
    import shutil
    import tempfile

    import modelopt.onnx.quantization as moq
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="resnet-deploy-modelopt-") as tmp:
        source = os.path.join(tmp, os.path.basename(job["onnx_path"]))  # quantize rewrites its input file
        shutil.copyfile(job["onnx_path"], source)
        moq.quantize(
            onnx_path=source,
            quantize_mode="int8",
            calibration_method="max",  # one image; every activation scale is then replaced from the cache
            calibration_data={job["input_name"]: np.load(job["example"], allow_pickle=False)},
            calibration_cache_path=job["cache"],
            calibration_eps=["cpu"],
            high_precision_dtype="fp32",
            nodes_to_exclude=list(job["nodes_to_exclude"]),
            output_path=job["output_path"],
            log_level="ERROR",
        )


def example_shape(job: dict) -> tuple[int, ...]:
    """The example image's shape: given by a prepare job, read from the example file by a quantize job."""
    if "example_shape" in job:
        return tuple(job["example_shape"])
    import numpy as np

    return np.load(job["example"], mmap_mode="r", allow_pickle=False).shape


def job_key(job: dict) -> tuple:
    """What a prepared graph depends on: the file's version, its input, the example's shape and the excluded nodes."""
    stat = os.stat(job["onnx_path"])
    return (
        job["onnx_path"], stat.st_ino, stat.st_size, stat.st_mtime_ns, job["input_name"], example_shape(job),
        tuple(job["nodes_to_exclude"]),
    )  # fmt: skip


@dataclass(frozen=True)
class Prepared:
    """What `quantize_with_scales` computes before it reads the scales, for one job key: the graph as ModelOpt
    prepares it, the nodes it would quantize and its quantizer's options. A `prepare` job makes it while the parent
    still calibrates; the quantize job with that key then only inserts the Q/DQ nodes with the scales."""

    model: Any  # onnx.ModelProto, read only
    inferred: bytes  # the shape-inferred model with ONNX Runtime's metadata, which QDQQuantizer takes (and changes)
    node_inputs: dict[str, tuple[str, ...]]  # node name -> names of its input tensors
    excluded: list[str]
    candidates: frozenset[str]  # names of the nodes ModelOpt's int8 rules would quantize
    no_quantize_inputs: list
    options: dict  # ONNX Runtime quantizer options, TensorQuantOverrides included where they apply


def prepare(job: dict) -> Prepared | None:
    """The scale-independent part of `quantize_with_scales`; None for a graph that path does not cover (MatMul)."""
    import onnx
    import onnx_graphsurgeon as gs
    from modelopt.onnx import utils as mo_utils
    from modelopt.onnx.quantization import int8 as mo_int8
    from modelopt.onnx.quantization.graph_utils import (
        find_nodes_from_convs_to_exclude,
        find_nodes_from_matmul_to_exclude,
        find_nodes_to_exclude,
    )
    from modelopt.onnx.quantization.ort_utils import configure_ort
    from modelopt.onnx.quantization.qdq_utils import has_qdq_nodes
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.quant_utils import add_infer_metadata

    model = onnx.load(job["onnx_path"])
    if has_qdq_nodes(model) or any(node.op_type == "MatMul" for node in model.graph.node):
        return None
    # quantize._preprocess_onnx and trt_utils.load_onnx_model: topological order, IR <= 10, no stale value_info,
    # opset >= 19, every node named, no initializer shared between nodes
    graph = gs.import_onnx(model)
    graph.toposort()
    model = gs.export_onnx(graph)
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    mo_utils.clear_stale_value_info(model)
    if 1 < mo_utils.get_opset_version(model) < INT8_MIN_OPSET:
        model = onnx.version_converter.convert_version(model, INT8_MIN_OPSET)
    mo_utils.name_onnx_nodes(model.graph)
    model, _ = mo_utils.duplicate_shared_constants(model)

    # int8.quantize: which nodes, with which options (configure_ort also patches ONNX Runtime's quantizer). Its GEMV
    # rule (a Gemm whose output has a dimension of 1 runs without Q/DQ) reads the shapes of the calibration data:
    # ModelOpt's own shape-inference variant of that rule, with the shape of the example, instead of an inference.
    shape = list(example_shape(job))
    gemv = find_nodes_from_matmul_to_exclude(job["onnx_path"], calibration_shapes={job["input_name"]: shape})
    graph = gs.import_onnx(model)
    graph.toposort()
    excluded = find_nodes_to_exclude(graph, [*job["nodes_to_exclude"], *gemv], None)
    excluded.extend(find_nodes_from_convs_to_exclude(graph, quantize_mode="int8"))
    options, quantizable_types = configure_ort(
        list({node.op for node in graph.nodes}), [], None, ["cpu"], False, [], None, None, "legacy"
    )
    nodes, no_quantize_inputs = mo_int8._find_nodes_to_quantize(graph, quantizable_types, excluded)
    options["QDQDisableWeightAdjustForInt32Bias"] = True
    if options.get("QDQOpTypePerChannelSupportToAxis", {}).get("Conv", 0) == 0:  # the axis conv_weight_overrides uses
        options["TensorQuantOverrides"] = conv_weight_overrides(model, QuantType.QInt8, False)
    # ort_patching._quantize_static's model: shapes inferred, ONNX Runtime's metadata
    inferred = mo_utils.infer_shapes(model)
    add_infer_metadata(inferred)
    return Prepared(
        model,
        inferred.SerializeToString(),
        {node.name: tuple(tensor.name for tensor in node.inputs) for node in graph.nodes},
        excluded,
        frozenset(node.name for node in nodes),
        no_quantize_inputs,
        options,
    )


def quantize_with_scales(job: dict, prepared: Prepared | None = None) -> bool:
    """What `quantize_full` writes, without ModelOpt's calibration machinery, from `prepared` (made for this job's
    key) or prepared now; False (nothing written) for a graph this path does not cover (MatMul nodes)."""
    import copy

    import numpy as np
    import onnx
    import onnx_graphsurgeon as gs
    from modelopt.onnx import utils as mo_utils
    from modelopt.onnx.quantization.calib_utils import import_scales_from_calib_cache
    from modelopt.onnx.quantization.graph_utils import get_concat_eliminated_tensors, remove_partial_input_qdq
    from modelopt.onnx.quantization.qdq_utils import replace_scale_values
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    prepared = prepared or prepare(job)
    if prepared is None:
        return False
    model = prepared.model
    scales = import_scales_from_calib_cache(job["cache"])
    cached = {name.replace("_scale", "") for name in scales}  # as int8.quantize reads the cache's names
    with_scales = {name for name, inputs in prepared.node_inputs.items() if any(t in cached for t in inputs)}
    selected = [name for name in prepared.candidates & with_scales if name not in prepared.excluded]
    if selected:
        options = copy.deepcopy(prepared.options)
        groups = get_concat_eliminated_tensors(model, selected)
        if groups:
            options["group_qdq_tensors"] = groups
        # ort_patching._quantize_static with the ranges its calibrator would measure: symmetric, from the cache
        ranges = TensorsData(
            CalibrationMethod.MinMax,
            {
                name[: -len("_scale")]: TensorData(lowest=np.float32(-scale * 127), highest=np.float32(scale * 127))
                for name, scale in scales.items()
            },
        )
        quantizer = QDQQuantizer(
            onnx.ModelProto.FromString(prepared.inferred),
            True,  # per_channel
            False,  # reduce_range
            QuantType.QInt8,  # weights
            QuantType.QInt8,  # activations
            ranges,
            selected,
            list(prepared.excluded),
            list(set(QLinearOpsRegistry) | set(QDQRegistry)),
            options,
        )
        quantizer.quantize_model()
        quantizer.model.topological_sort()  # as ONNXModel.save_model_to_file does before writing it
        graph = gs.import_onnx(quantizer.model.model)
        remove_partial_input_qdq(graph, prepared.no_quantize_inputs)
        model = gs.export_onnx(graph)
        replace_scale_values(model.graph, scales)
    mo_utils.save_onnx(model, job["output_path"])
    return True


class PreparedGraphs:
    """The graphs `prepare` jobs made, by job key: the last few (a mixed-precision search quantizes one model with
    many different excluded nodes, each key once)."""

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self._by_key: dict[tuple, Prepared | None] = {}

    def prepare(self, job: dict) -> None:
        key = job_key(job)
        self._by_key.pop(key, None)
        self._by_key[key] = prepare(job)
        while len(self._by_key) > self.size:
            self._by_key.pop(next(iter(self._by_key)))

    def quantize(self, job: dict) -> bool:
        key = job_key(job)
        if key in self._by_key and self._by_key[key] is None:
            return False  # prepared already: a graph quantize_with_scales does not cover
        return quantize_with_scales(job, self._by_key.get(key))


def _with_scales_if_possible(job: dict, graphs: PreparedGraphs) -> bool:
    """`quantize_with_scales`, or False when this ModelOpt lacks the functions it calls (constraints.txt pins the
    version the equivalence test checks; another version takes the full path instead of failing)."""
    try:
        return graphs.quantize(job)
    except (ImportError, AttributeError):
        return False


def prepare_job(job: dict, graphs: PreparedGraphs) -> dict:
    """Always ok: a graph that cannot be prepared is prepared again by its quantize job, which reports why."""
    with captured_output():
        try:
            graphs.prepare(job)
        except Exception:  # noqa: BLE001, S110 - the quantize job meets the same problem and says it
            pass
    return {"ok": True}


def quantize_job(job: dict, graphs: PreparedGraphs) -> dict:
    with captured_output() as log:
        try:
            import onnx
            from modelopt.onnx.autocast import convert_to_f16

            if job.get("full") or not _with_scales_if_possible(job, graphs):
                quantize_full(job)
            if job.get("fp16_output_path"):
                model = onnx.load(job["output_path"])
                onnx.save(convert_to_f16(model, keep_io_types=True, low_precision_type="fp16"), job["fp16_output_path"])
        except Exception as exc:  # noqa: BLE001 - report any failure as one line to the parent
            detail = str(exc).splitlines()[0][:300] if str(exc) else (log.getvalue().strip().splitlines() or [""])[-1]
            return {"ok": False, "error": f"{type(exc).__name__}: {detail}"}
    return {"ok": True}


def main() -> int:
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints (ONNX Runtime's C++ logs too) -> stderr
    try:
        import_modelopt()
        failed = None
    except Exception as exc:  # noqa: BLE001 - every job then says why
        failed = {"ok": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}
    graphs = PreparedGraphs()
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        if failed or job.get("ping"):
            reply = failed or {"ok": True}
        elif job.get("prepare"):
            reply = prepare_job(job, graphs)
        else:
            reply = quantize_job(job, graphs)
        replies.write(json.dumps(reply) + "\n")
        replies.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
