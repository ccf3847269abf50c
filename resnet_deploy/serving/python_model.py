"""The `model.py` of a Python-backend model (`resnet-deploy triton OUT --repo DIR --python-backend`).

Triton's Python backend runs this file; it needs only numpy and ONNX Runtime or OpenVINO in the Python
environment that the config's EXECUTION_ENV_PATH names (not resnet-deploy). It runs the ONNX file beside
it with the same settings as resnet-deploy's in-process engines (engines/ort.py, engines/openvino.py), so
the served logits can be checked against them:

- ONNX Runtime: all graph optimizations, the CPU execution provider, `threads` intra-op threads when set;
  for a model made for TensorRT, ONNX Runtime's WeightBiasQuantization optimizer off (as OrtRunner does).
- OpenVINO: the CPU, the latency hint, inference precision f32 (or bf16 for an openvino-bf16 model, where
  the CPU has it), one compiled model for every batch size (the ONNX's dynamic batch axis, as Triton's
  OpenVINO backend does; static shapes would compile again for each batch size the dynamic batcher forms,
  in the middle of serving).

The requests Triton's dynamic batcher hands over in one `execute` call are concatenated into one batch,
run once, and split back into one response each.

Tensors cross the backend by DLPack when numpy is 2.x: the Python backend of the nvidia-pytriton wheel
(Triton 2.51) was built against numpy 1.x, and its numpy conversions (`as_numpy()`, `Tensor(name, array)`)
read a dtype's item size where numpy 1.x kept it, which under numpy 2 gives 0: inputs come out wrong and
outputs empty. Its DLPack path is right; it renames the capsules it consumes `used_dlpack` (numpy expects
`used_dltensor`), so numpy's capsule destructor reports "PyCapsule_GetPointer called with incorrect name" for
each output while the backend frees the tensor itself: that one message is not written to the server log.
"""

import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by Triton's Python backend

# ONNX Runtime graph optimizers turned off for models made for TensorRT (engines/ort.py: NOT_FOR_TENSORRT_MODELS).
NOT_FOR_TENSORRT_MODELS = ["WeightBiasQuantization"]
NUMPY2 = int(np.__version__.split(".")[0]) >= 2


def to_numpy(tensor):
    return np.from_dlpack(tensor) if NUMPY2 else tensor.as_numpy()


def to_tensor(name, array):
    array = np.ascontiguousarray(array)
    return pb_utils.Tensor.from_dlpack(name, array) if NUMPY2 else pb_utils.Tensor(name, array)


def _quiet_capsule_names(hook):
    def unraisable(info):
        if not (isinstance(info.exc_value, ValueError) and "PyCapsule_GetPointer" in str(info.exc_value)):
            hook(info)

    return unraisable


def _parameter(config, key, default=""):
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


class _OnnxRuntime:
    def __init__(self, path, threads, target):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        disabled = NOT_FOR_TENSORRT_MODELS if target == "tensorrt" else []
        self.session = ort.InferenceSession(
            path, sess_options=options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled
        )
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def run(self, batch):
        return self.session.run([self.output_name], {self.input_name: batch})[0]


class _OpenVINO:
    def __init__(self, path, threads, precision):
        import openvino as ov

        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        core = ov.Core()
        self.request = core.compile_model(core.read_model(path), "CPU", config).create_infer_request()

    def run(self, batch):
        return self.request.infer({0: batch})[0]


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        folder = os.path.join(args["model_repository"], args["model_version"])
        path = os.path.join(folder, _parameter(config, "model_file", "model.onnx"))
        threads = int(_parameter(config, "threads", "0") or 0)
        runtime = _parameter(config, "runtime")
        if runtime == "onnxruntime":
            self.engine = _OnnxRuntime(path, threads, _parameter(config, "resnet_deploy.target"))
        elif runtime == "openvino":
            self.engine = _OpenVINO(path, threads, _parameter(config, "inference_precision", "f32"))
        else:
            raise pb_utils.TritonModelException(f"parameter 'runtime' must be onnxruntime or openvino, got {runtime!r}")
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        if NUMPY2:
            sys.unraisablehook = _quiet_capsule_names(sys.unraisablehook)

    def execute(self, requests):
        inputs = [to_numpy(pb_utils.get_input_tensor_by_name(r, self.input_name)) for r in requests]
        sizes = [len(x) for x in inputs]
        batch = np.ascontiguousarray(np.concatenate(inputs), dtype=np.float32)
        logits = np.asarray(self.engine.run(batch), dtype=np.float32)
        responses, start = [], 0
        for size in sizes:
            tensor = to_tensor(self.output_name, logits[start : start + size])
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
            start += size
        return responses
