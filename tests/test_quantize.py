"""INT8 (both targets, every method) and FP16 models of the digits ResNet-18, made from one calibration:
accuracy against PyTorch on real validation images, and the graph structure each consumer needs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from resnet_deploy.calibration.fp16 import DATA_MAX, convert_fp16, overflow_nodes
from resnet_deploy.calibration.graph import module_path, producers, quantized_nodes, residual_adds
from resnet_deploy.calibration.methods import CalibrationMethod
from resnet_deploy.calibration.quantize import quantize_int8
from resnet_deploy.data import open_dataset
from resnet_deploy.engines.ort import OrtRunner, exact_runner
from resnet_deploy.engines.pytorch import PyTorchRunner
from resnet_deploy.errors import UserError
from resnet_deploy.isa import host_isa
from resnet_deploy.options import Target
from resnet_deploy.pipeline.kernels import KERNEL_LOSS_POINTS, loss_points
from resnet_deploy.pipeline.validate import validate_all

from .conftest import CASES


@pytest.fixture(scope="session")
def accuracies(quantized, loaded, workload):
    """One reference pass over the 449 validation images; every model compared with it twice: on ONNX Runtime as
    it runs on this CPU (fused integer kernels) and under its exact ONNX semantics (graph optimizations off)."""
    val = open_dataset(workload.val, loaded.preprocess)
    keys = [k for k in quantized if k != "tensorrt-fp16-twin"]
    runners = [OrtRunner(quantized[k].path, str(k), quantized[k].precision, quantized[k].target) for k in keys]
    runners += [exact_runner(quantized[k].path, quantized[k].precision, quantized[k].target) for k in keys]
    results = validate_all(PyTorchRunner(loaded.module), runners, val, loaded.num_classes)
    return dict(zip(keys, results[: len(keys)])), dict(zip(keys, results[len(keys) :]))


@pytest.mark.parametrize(("method", "target"), CASES, ids=[f"{m}-{t}" for m, t in CASES])
def test_int8_model_agrees_with_pytorch_under_its_exact_semantics(accuracies, quantized, method, target):
    """The quantizer's property, on any CPU: the INT8 model itself (its Q/DQ graph as the ONNX spec defines it,
    what TensorRT's int32 accumulation computes) keeps PyTorch's top-1."""
    accuracy = accuracies[1][(method, target)]
    assert accuracy.passed and accuracy.samples == 449
    assert accuracy.top1_agreement >= 0.98, f"{method}/{target}: top-1 agreement {accuracy.top1_agreement:.4f}"
    assert accuracy.top1_drop_points <= 1.5, f"{method}/{target}: accuracy drop {accuracy.top1_drop_points:.2f} points"
    info = quantized[(method, target)].details["quantization"]
    assert info["method"] == method.value and info["samples"] == 270 and info["quantized_nodes"] >= 20
    assert info["excluded_nodes"] == []


@pytest.mark.parametrize("method", list(CalibrationMethod))
def test_onnxruntime_target_as_run_on_this_cpu_loses_nothing_to_its_kernels(accuracies, quantized, method):
    """The as-run property: the onnxruntime-target model is made for this machine's kind of CPU (7-bit weights
    without VNNI, 8-bit with it), so ONNX Runtime's fused U8S8 kernels here keep PyTorch's top-1 as well as the
    model itself does (no 16-bit saturation), with the same threshold as the exact test."""
    as_run, exact = accuracies[0][(method, Target.ONNXRUNTIME)], accuracies[1][(method, Target.ONNXRUNTIME)]
    assert as_run.passed and as_run.top1_agreement >= 0.98, f"{method}: top-1 agreement {as_run.top1_agreement:.4f}"
    assert loss_points(as_run, exact) <= KERNEL_LOSS_POINTS, (as_run.top1_agreement, exact.top1_agreement)
    cpu = quantized[(method, Target.ONNXRUNTIME)].details["quantization"]["cpu"]
    assert cpu["kind"] == host_isa().kind.value and cpu["chosen_by"] == "host"


def test_fp16_agrees_with_pytorch(accuracies, quantized):
    accuracy = accuracies[0]["fp16"]
    assert accuracy.passed and accuracy.top1_agreement >= 0.995
    assert accuracies[1]["fp16"].top1_agreement >= 0.995  # and under its exact semantics
    model = onnx.load(str(quantized["fp16"].path))
    assert {i.type.tensor_type.elem_type for i in [*model.graph.input, *model.graph.output]} == {onnx.TensorProto.FLOAT}
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    assert quantized["fp16"].details["fp16"]["fp16_nodes"] > 40


def _activation_zero_points(model):
    initializers = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in initializers:
            yield node.input[0], numpy_helper.to_array(initializers[node.input[2]])


def test_tensorrt_graph_is_symmetric_with_qdq_on_every_shortcut(quantized, fp32_onnx):
    source = onnx.load(str(fp32_onnx.path))
    made_by = producers(source)
    # In the FP32 graph: which input of each residual Add is the block's last conv (conv2 in a BasicBlock)?
    conv_side, shortcut_side = {}, {}
    for add, _ in residual_adds(source):
        paths = {name: module_path(made_by[name]) or "" for name in add.input}
        (conv_input,) = [name for name, path in paths.items() if path.endswith(".conv2")]
        (shortcut_input,) = [name for name in add.input if name != conv_input]  # block input or downsample output
        conv_side[add.name], shortcut_side[add.name] = conv_input, shortcut_input
    assert len(conv_side) == 8  # ResNet-18: 8 BasicBlocks
    for method in CalibrationMethod:
        artifact = quantized[(method, Target.TENSORRT)]
        model = onnx.load(str(artifact.path))
        initializers = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
                zero_point = initializers[node.input[2]]
                assert zero_point.dtype == np.int8 and not zero_point.any(), node.name
        made = producers(model)
        adds = {add.name: add for add, _ in residual_adds(model)}
        assert set(adds) == set(conv_side)
        for name, conv_input in conv_side.items():
            add = adds[name]
            shortcut = next(i for i in add.input if i != conv_input)
            assert conv_input in add.input and made[conv_input].op_type == "Conv"  # the conv side: no Q/DQ
            dq = made[shortcut]
            assert dq.op_type == "DequantizeLinear", f"{name}: shortcut not dequantized"
            q = made[dq.input[0]]
            assert q.op_type == "QuantizeLinear" and q.input[0] == shortcut_side[name], f"{name}: no Q/DQ pair on the shortcut"
        assert artifact.details["quantization"]["activations"] == "int8 symmetric per tensor"


def test_tensorrt_scales_are_the_calibrated_ones(quantized, calibration):
    model = onnx.load(str(quantized[(CalibrationMethod.ENTROPY, Target.TENSORRT)].path))
    initializers = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    ranges = calibration.ranges
    checked = 0
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in ranges:
            assert float(initializers[node.input[1]]) == pytest.approx(ranges[node.input[0]].amax / 127, rel=1e-6)
            checked += 1
    assert checked >= 20


def test_tensorrt_fp16_twin_has_the_same_qdq(quantized):
    twin = quantized["tensorrt-fp16-twin"]
    base = quantized[(CalibrationMethod.ENTROPY, Target.TENSORRT)]
    assert twin.details["quantization"]["high_precision_dtype"] == "fp16"
    assert twin.details["quantization"]["same_qdq_as"] == base.path.name and twin.target == "tensorrt"
    model, reference = onnx.load(str(twin.path)), onnx.load(str(base.path))
    assert {i.type.tensor_type.elem_type for i in [*model.graph.input, *model.graph.output]} == {onnx.TensorProto.FLOAT}
    assert all(zp.dtype == np.int8 and not zp.any() for _, zp in _activation_zero_points(model))
    assert sorted(n.op_type for n in model.graph.node if n.op_type != "Cast") == sorted(n.op_type for n in reference.graph.node)
    scales = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if i.name.endswith("_scale_1")}
    assert scales and all(s.dtype == np.float16 for s in scales.values())


def test_onnxruntime_graph_is_the_fast_cpu_recipe(quantized):
    """U8 activations, S8 per-channel weights, ReLUs folded into the quantized range, FP32 logits."""
    artifact = quantized[(CalibrationMethod.ENTROPY, Target.ONNXRUNTIME)]
    model = onnx.load(str(artifact.path))
    initializers = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    activations = dict(_activation_zero_points(model))
    assert activations and all(zp.dtype == np.uint8 for zp in activations.values())
    weights = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in initializers]
    conv_weights = [w for w in weights if initializers[w.input[0]].ndim == 4]
    assert len(conv_weights) == 20
    for w in conv_weights:
        assert initializers[w.input[0]].dtype == np.int8 and initializers[w.input[1]].shape == (
            initializers[w.input[0]].shape[0],
        )
    assert not [n for n in model.graph.node if n.op_type == "Relu"]
    output_producer = producers(model)[model.graph.output[0].name]
    assert output_producer.op_type == "Gemm"  # logits are not quantized
    assert len(quantized_nodes(model)) == artifact.details["quantization"]["quantized_nodes"]


def test_exclude_layers_keeps_nodes_in_fp32_for_both_targets(fp32_onnx, calibration, example, modelopt, tmp_path):
    source = onnx.load(str(fp32_onnx.path))
    wanted = sorted(n.name for n in source.graph.node if module_path(n) in ("conv1", "fc"))
    assert len(wanted) == 2
    for target in Target:
        path = tmp_path / f"{target}.onnx"
        (artifact,) = quantize_int8(fp32_onnx, calibration, target, path, example, "^conv1$|^fc$", session=modelopt)
        assert sorted(artifact.details["quantization"]["excluded_nodes"]) == wanted
        model = onnx.load(str(artifact.path))
        made = producers(model)
        for node in model.graph.node:
            if node.name in wanted:
                assert all(made.get(i) is None or made[i].op_type != "DequantizeLinear" for i in node.input), (target, node.name)
    with pytest.raises(UserError, match="--exclude-layers 'layer9' matches no node"):
        quantize_int8(fp32_onnx, calibration, Target.ONNXRUNTIME, tmp_path / "x.onnx", example, "layer9")
    assert not (tmp_path / "x.onnx").exists()


def test_tensorrt_fast_path_writes_what_modelopts_quantize_writes(fp32_onnx, calibration, example, tmp_path):
    """The worker's path without ModelOpt's calibration (`quantize_with_scales`) against `modelopt.onnx.quantization.
    quantize` itself with the same cache: the same nodes in the same order, the same initializers byte for byte, the
    same inputs, outputs and opsets, for the FP32-elsewhere model and its FP16 twin, with nodes excluded; and neither
    rewrites the FP32 ONNX it reads (ModelOpt's `quantize` rewrites its input file in place)."""
    import re

    from resnet_deploy.calibration.quantize import ModelOptSession, write_trt_cache
    from resnet_deploy.files import sha256_file

    source = onnx.load(str(fp32_onnx.path))
    excluded = [n.name for n in source.graph.node if module_path(n) in ("layer2.0.conv1", "layer3.1")]
    assert len(excluded) >= 2
    write_trt_cache(calibration, tmp_path / "calib.cache")
    np.save(tmp_path / "example.npy", np.ascontiguousarray(example[:1], dtype=np.float32))
    before = (sha256_file(fp32_onnx.path), fp32_onnx.path.stat().st_mtime_ns)
    written = {}
    with ModelOptSession() as session:
        for way in ("full", "fast", "prepared"):  # the fast path without and with the graph prepared by an earlier job
            if way == "prepared":
                session.prepare(fp32_onnx.path, fp32_onnx.input_name, excluded, example)
            job = {
                "onnx_path": str(fp32_onnx.path),
                "cache": str(tmp_path / "calib.cache"),
                "example": str(tmp_path / "example.npy"),
                "input_name": fp32_onnx.input_name,
                "nodes_to_exclude": [f"^{re.escape(name)}$" for name in excluded],
                "output_path": str(tmp_path / f"{way}.onnx"),
                "fp16_output_path": str(tmp_path / f"{way}.fp16.onnx"),
                "full": way == "full",
            }
            session.run(job)
            written[way] = (onnx.load(job["output_path"]), onnx.load(job["fp16_output_path"]))
    assert (sha256_file(fp32_onnx.path), fp32_onnx.path.stat().st_mtime_ns) == before
    for reference, fast in [*zip(written["full"], written["fast"]), *zip(written["full"], written["prepared"])]:
        assert [n.SerializeToString() for n in fast.graph.node] == [n.SerializeToString() for n in reference.graph.node]
        assert {i.name: i.SerializeToString() for i in fast.graph.initializer} == {
            i.name: i.SerializeToString() for i in reference.graph.initializer
        }
        for field in ("input", "output"):
            assert [v.SerializeToString() for v in getattr(fast.graph, field)] == [
                v.SerializeToString() for v in getattr(reference.graph, field)
            ]
        assert fast.opset_import == reference.opset_import and fast.ir_version == reference.ir_version
    quantized = quantized_nodes(written["prepared"][0])
    convs = [n.name for n in source.graph.node if n.name in excluded and n.op_type == "Conv"]
    assert len(quantized) >= 15 and convs and not set(convs) & set(quantized)  # an excluded Conv reads no DQ


def test_a_written_model_that_fails_the_checker_is_refused_inline_or_with_external_data(fp32_onnx, tmp_path):
    from resnet_deploy.calibration.graph import checked_onnx
    from resnet_deploy.errors import CheckFailed

    good = onnx.load(str(fp32_onnx.path))
    bad = onnx.load(str(fp32_onnx.path))
    conv = next(n for n in bad.graph.node if n.op_type == "Conv")
    conv.input.append("no_such_tensor")  # a fourth input: Conv takes at most three
    for external in (False, True):
        for name, model in (("good", good), ("bad", bad)):
            path = tmp_path / f"{name}-{external}.onnx"
            onnx.save(model, path, save_as_external_data=external, location=f"{path.name}.data", size_threshold=0)
            if name == "good":
                loaded = checked_onnx(path, "the model")
                assert [n.name for n in loaded.graph.node] == [n.name for n in good.graph.node]
            else:
                with pytest.raises(CheckFailed, match="the model fails onnx.checker"):
                    checked_onnx(path, "the model")


# ---------------------------------------------------------------------- FP16 overflow and NaN/Inf


@pytest.fixture(scope="session")
def loud_model(workload, loaded, val_images, tmp_path_factory):
    """The digits model with the classifier scaled 1000x: weights still fine in FP16, logits in the thousands."""
    from resnet_deploy.models import load_model
    from resnet_deploy.pipeline.export import export_onnx
    from resnet_deploy.pipeline.fold import fold_and_verify

    folder = tmp_path_factory.mktemp("loud")
    state = {k: v.clone() for k, v in loaded.module.state_dict().items()}
    state["fc.weight"] *= 1e3
    state["fc.bias"] *= 1e3
    torch.save(state, folder / "loud.pth")
    model = load_model("resnet18", folder / "loud.pth", input_size=(3, 32, 32))
    folded, _ = fold_and_verify(model, val_images[:16])
    return folder, model, export_onnx(folded, model.info, val_images[:16], folder / "loud.fp32.onnx")


def test_fp16_keeps_overflowing_nodes_in_fp32(loud_model, calib_dataset, workload):
    from resnet_deploy.calibration.calibrate import CalibrationSet, calibrate
    from resnet_deploy.calibration.methods import CalibrationOptions

    folder, model, fp32 = loud_model
    calibration = calibrate(fp32, CalibrationSet.draw(calib_dataset, 64, 0), CalibrationOptions(size=64))
    overflow = overflow_nodes(onnx.load(str(fp32.path)), calibration)
    assert list(overflow) == ["node_linear"] and overflow["node_linear"] > DATA_MAX  # the logits, not the weights
    artifact = convert_fp16(fp32, calibration, folder / "loud.fp16.onnx")
    assert artifact.details["fp16"]["fp32_nodes"] == ["node_linear"]
    val = open_dataset(workload.val, model.preprocess)
    (accuracy,) = validate_all(PyTorchRunner(model.module), [OrtRunner(artifact.path, "fp16", "fp16")], val, 10)
    assert accuracy.passed and accuracy.top1_agreement >= 0.995


def test_nonfinite_outputs_are_a_failed_validation_and_exit_1(quantized, workload, tmp_path):
    """An FP16 model whose classifier bias overflowed to Inf: NaN/Inf outputs fail (exit 1), never a number.

    (ONNX Runtime's CPU EP saturates FP16 conversions at 65504 instead of producing Inf, so the overflow is
    written into the model here rather than provoked.)"""
    import json

    from click.testing import CliRunner

    from resnet_deploy.cli import cli
    from resnet_deploy.reports.report import EngineResult, Report

    model = onnx.load(str(quantized["fp16"].path))
    bias = next(i for i in model.graph.initializer if i.name == "fc.bias")
    values = numpy_helper.to_array(bias).copy()
    values[3] = np.inf
    bias.CopyFrom(numpy_helper.from_array(values, "fc.bias"))
    broken = tmp_path / "overflowed.fp16.onnx"
    onnx.save(model, str(broken))
    result = CliRunner().invoke(
        cli,
        ["validate", "--arch", "resnet18", "--weights", str(workload.weights), "--input-size", "3x32x32"]
        + ["--onnx", str(broken), "--val-data", str(workload.val), "--json", str(tmp_path / "v.json"), "--quiet"],
    )
    assert result.exit_code == 1, result.output
    assert "NaN/Inf" in result.output
    rows = json.loads((tmp_path / "v.json").read_text())["engines"]
    assert [r["name"] for r in rows] == ["onnxruntime-fp16", "openvino-fp16"]  # both CPU engines catch it
    for row in rows:
        assert row["precision"] == "fp16" and row["accuracy"]["nonfinite_outputs"] == 449
        assert row["accuracy"]["max_abs_diff"] is None and row["accuracy"]["cosine_min"] is None
    # the same accuracy in a build report decides the build's exit code
    engine = EngineResult("onnxruntime-fp16", "onnxruntime", "fp16", None, str(broken))
    engine.accuracy = _accuracy_from_row(row["accuracy"])
    report = Report({}, {}, {}, {}, [engine], {}, {})
    assert report.return_code == 1 and report.failures == ["onnxruntime-fp16: 449 outputs are NaN/Inf"]


def _accuracy_from_row(row):
    from resnet_deploy.engines.accuracy import Accuracy

    return Accuracy(**{k: (float("nan") if v is None else v) for k, v in row.items()})
