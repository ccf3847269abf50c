"""The engine registry: every kind plans and runs the digits model through one interface, and says why it cannot run."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from resnet_deploy.config import BuildConfig, Engine
from resnet_deploy.engines import registry
from resnet_deploy.engines.kind import EngineSettings
from resnet_deploy.engines.openvino import OpenVINOOptions, OpenVINORunner, openvino_missing
from resnet_deploy.engines.ort import OrtOptions, OrtRunner, exact_runner
from resnet_deploy.engines.pytorch import PyTorchOptions, PyTorchRunner
from resnet_deploy.engines.trt import TensorRTOptions, TensorRTRunner, missing_requirements
from resnet_deploy.options import Target

from .test_trt import write_engine_manifest

ALL_KINDS = tuple(k.name for k in registry.KINDS)


def test_every_kind_is_listed_once_with_its_options_and_native_target():
    assert ALL_KINDS == ("onnxruntime", "openvino", "tensorrt", "pytorch")
    assert [k.options_type for k in registry.KINDS] == [OrtOptions, OpenVINOOptions, TensorRTOptions, PyTorchOptions]
    assert [k.native_target for k in registry.KINDS] == ["onnxruntime", "onnxruntime", "tensorrt", "pytorch"]
    assert [k.name for k in registry.KINDS if k.builds] == ["tensorrt"]  # the only kind that compiles a file
    with pytest.raises(KeyError, match="no engine kind 'tflite'; known: onnxruntime, openvino, tensorrt, pytorch"):
        registry.kind("tflite")


def test_available_is_none_or_one_line_saying_why():
    assert registry.kind("onnxruntime").available() is None and registry.kind("pytorch").available() is None
    assert registry.kind("openvino").available() == openvino_missing()
    reason = registry.kind("tensorrt").available()
    if missing_requirements():  # this machine: no TensorRT, no GPU
        assert reason.startswith("TensorRT engines need TensorRT and an NVIDIA GPU; missing here: ") and "\n" not in reason
    else:
        assert reason is None


def test_plan_of_the_digits_model_on_every_kind(fp32_onnx, tmp_path):
    settings = EngineSettings(ALL_KINDS, threads=2, batch_sizes=(1, 8), largest_batch=32, folder=tmp_path)
    specs = registry.plan(fp32_onnx, settings)
    assert [(s.kind, s.name, s.file) for s in specs] == [
        ("onnxruntime", "onnxruntime-fp32", fp32_onnx.path),
        ("openvino", "openvino-fp32", fp32_onnx.path),
        ("tensorrt", "tensorrt-fp32", tmp_path / "model.fp32.engine"),  # the reference plans nothing for an ONNX file
    ]
    assert all(s.model is fp32_onnx and s.threads == 2 and s.precision == "fp32" for s in specs)
    assert specs[0].profile == (1, 8, 32) and specs[2].profile == (1, 8, 8)  # ORT's TensorRT provider; TensorRT's profile
    assert registry.plan(fp32_onnx, dataclasses.replace(settings, kinds=())) == []
    int8_ort = registry.ModelFile(tmp_path / "model.int8.onnx", "int8", "onnxruntime")
    assert [s.name for s in registry.plan(int8_ort, settings)] == ["onnxruntime-int8", "openvino-int8"]  # not TensorRT's


@pytest.mark.skipif(openvino_missing() is not None, reason="OpenVINO is not installed here")
def test_runners_of_every_kind_that_runs_here_agree_on_the_digits(fp32_onnx, loaded, val_images):
    settings = EngineSettings(("onnxruntime", "openvino"), threads=2, options=(OpenVINOOptions(bf16=True),))
    specs = registry.plan(registry.read_model(fp32_onnx.path), settings)
    assert [s.name for s in specs] == ["onnxruntime-fp32", "openvino-fp32", "openvino-bf16"]
    reference = registry.kind("pytorch").spec(
        fp32_onnx, EngineSettings(options=(PyTorchOptions(loaded.module),)), name="pytorch-fp32"
    )
    runners = [registry.runner(s) for s in specs[:2]] + [registry.runner(reference)]
    assert [type(r) for r in runners] == [OrtRunner, OpenVINORunner, PyTorchRunner]
    assert [r.name for r in runners] == ["onnxruntime-fp32", "openvino-fp32", "pytorch-fp32"]
    with exact_runner(fp32_onnx.path, "fp32", None) as exact:
        expected = exact.infer(val_images)
    for runner in runners:
        with runner:
            logits = runner.infer(val_images)
        assert logits.shape == (len(val_images), loaded.num_classes)
        np.testing.assert_allclose(logits, expected, atol=1e-3, rtol=1e-3)
    assert registry.runner(specs[2]).inference_precision == "bf16"  # planned, and refused only when activated here


def test_a_spec_goes_to_its_own_kind_with_its_own_options(fp32_onnx):
    (spec,) = registry.plan(fp32_onnx, EngineSettings())
    with pytest.raises(RuntimeError, match="onnxruntime-fp32 is a onnxruntime engine, not openvino"):
        registry.kind("openvino").runner(spec)
    with pytest.raises(RuntimeError, match="expected OrtOptions, got OpenVINOOptions"):
        registry.runner(dataclasses.replace(spec, options=OpenVINOOptions()))
    with pytest.raises(NotImplementedError, match="ONNX Runtime runs the model file as it is"):
        registry.kind("onnxruntime").build(spec, fp32_onnx.path.parent)
    with pytest.raises(RuntimeError, match="needs its module"):
        registry.runner(registry.kind("pytorch").spec(fp32_onnx, EngineSettings()))


def test_settings_give_each_kind_its_options_or_the_defaults():
    settings = EngineSettings(options=(OpenVINOOptions(streams=2),))
    assert settings.options_for(OpenVINOOptions).streams == 2 and settings.options_for(OrtOptions) == OrtOptions()
    with pytest.raises(RuntimeError, match="hold 2 OpenVINOOptionss"):
        EngineSettings(options=(OpenVINOOptions(), OpenVINOOptions())).options_for(OpenVINOOptions)


def test_a_build_config_composes_the_engine_settings(tmp_path):
    config = BuildConfig(
        arch="resnet18", weights=tmp_path / "w.pth", val_data=tmp_path, out=tmp_path / "out", threads=3, batch_size=16,
        targets=(Target.ONNXRUNTIME, Target.TENSORRT), engines=(Engine.ONNXRUNTIME,), providers=("cuda", "cpu"),
    )  # fmt: skip
    settings = config.engine_settings()
    assert settings.kinds == ("onnxruntime", "tensorrt") and settings.folder == (tmp_path / "out").absolute()
    assert (settings.threads, settings.batch_sizes, settings.largest_batch) == (3, (1, 8), 16)
    assert settings.options_for(OrtOptions).providers == ("cuda", "cpu")
    assert settings.options_for(TensorRTOptions) is config.tensorrt


def test_a_compiled_engine_file_is_read_back_from_its_manifest(tmp_path):
    engine = write_engine_manifest(tmp_path)
    spec = registry.kind("tensorrt").built(engine.path, EngineSettings())
    assert (spec.name, spec.file, spec.precision, spec.target) == ("tensorrt-fp32", engine.path, "fp32", None)
    runner = registry.runner(spec)
    assert isinstance(runner, TensorRTRunner) and runner.name == "tensorrt-fp32" and runner.chw == (3, 32, 32)
