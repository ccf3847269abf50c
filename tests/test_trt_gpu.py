"""TensorRT on a real GPU (`pytest -m gpu`; scripts/gpu-check.sh runs them). Skipped, with the reason, on
machines without TensorRT or an NVIDIA GPU (conftest.py marks them). None of these has run yet: no machine
this was written on has a GPU (README, TensorRT)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from click.testing import CliRunner

from resnet_deploy.artifacts import EngineArtifact, sidecar_path
from resnet_deploy.calibration.methods import CalibrationMethod
from resnet_deploy.cli import cli
from resnet_deploy.engines.ort import OrtRunner, OrtTensorrtOptions, parse_providers
from resnet_deploy.engines.trt import (
    BatchProfile,
    HardwareCompat,
    TensorRTOptions,
    TensorRTRunner,
    build_engine,
    engine_build_chain,
    engine_layer_datatypes,
)
from resnet_deploy.errors import CheckFailed, MissingDependency, UserError
from resnet_deploy.files import sha256_file
from resnet_deploy.options import BenchmarkOptions, Target
from resnet_deploy.pipeline.benchmark import benchmark

from .conftest import build_args

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def engine(fp32_onnx, tmp_path_factory):
    """The digits model's FP32 engine, built once, with a timing cache."""
    folder = tmp_path_factory.mktemp("trt")
    options = TensorRTOptions(timing_cache=folder / "timing.cache")
    return build_engine(fp32_onnx, folder / "model.fp32.engine", options, BatchProfile(1, 8, 32))


@pytest.fixture(scope="module")
def reduced(fp32_onnx, calibration, example, tmp_path_factory):
    """The digits model in FP16 (AutoCast) and INT8 for TensorRT (Q/DQ with FP32, and with FP16, elsewhere): one
    quantization, not the whole `quantized` matrix, so that `pytest -m gpu -x` fits the quick GPU check."""
    from resnet_deploy.calibration.fp16 import convert_fp16
    from resnet_deploy.calibration.quantize import quantize_int8

    folder = tmp_path_factory.mktemp("reduced")
    entropy = calibration.with_method(CalibrationMethod.ENTROPY, 99.99)
    int8, twin = quantize_int8(
        fp32_onnx, entropy, Target.TENSORRT, folder / "int8-tensorrt.onnx", example, None, folder / "int8-tensorrt.fp16.onnx"
    )
    return {
        "fp32": fp32_onnx,
        "fp16": convert_fp16(fp32_onnx, calibration, folder / "fp16.onnx"),
        "int8": int8,
        "int8-twin": twin,
    }


@pytest.fixture(scope="module")
def ort_logits(fp32_onnx, val_images):
    with OrtRunner(fp32_onnx.path, "onnxruntime-fp32", "fp32") as runner:
        return runner.infer(val_images)


def _assert_close(out, ref, rel=1e-3):
    assert out.shape == ref.shape and out.dtype == np.float32
    assert (out.argmax(1) == ref.argmax(1)).all()
    assert np.abs(out - ref).max() <= rel * np.abs(ref).max()


def test_manifest_describes_this_build(engine, fp32_onnx):
    import tensorrt
    import torch

    manifest = json.loads(sidecar_path(engine.path).read_text())
    assert manifest["kind"] == "tensorrt-engine" and manifest["sha256"] == sha256_file(engine.path)
    assert manifest["tensorrt_version"] == tensorrt.__version__
    major, minor = torch.cuda.get_device_capability()
    assert manifest["gpu"]["name"] == torch.cuda.get_device_name() and manifest["gpu"]["compute_capability"] == f"{major}.{minor}"
    assert manifest["profile"] == {"min": 1, "opt": 8, "max": 32}
    assert manifest["build"]["strongly_typed"] is True and manifest["build"]["tf32"] is False
    assert manifest["source_onnx_sha256"] == sha256_file(fp32_onnx.path) and manifest["build_seconds"] > 0
    assert (engine.path.parent / "timing.cache").stat().st_size > 0  # saved for the next build


def test_engine_matches_onnxruntime(engine, val_images, ort_logits):
    with TensorRTRunner(engine.path) as runner:
        _assert_close(runner.infer(val_images[:32]), ort_logits[:32])
        assert runner.device_ms() is not None and runner.device_ms() > 0


def test_runner_matches_polygraphy_trtrunner(engine, val_images):
    """polygraphy's own runner on the same engine is the independent reference for our buffers and copies."""
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    batch = val_images[:8]
    with TrtRunner(EngineFromBytes(engine.path.read_bytes())) as reference:
        expected = reference.infer({engine.input_name: batch})[engine.output_name]
    with TensorRTRunner(engine.path) as runner:
        np.testing.assert_allclose(runner.infer(batch), expected, rtol=1e-5, atol=1e-5)


def test_batches_outside_the_profile_are_chunked_and_padded(engine, fp32_onnx, val_images, ort_logits):
    with TensorRTRunner(engine.path) as runner:  # profile 1..32
        _assert_close(runner.infer(val_images), ort_logits)  # 64 = 2 chunks of 32
    narrow = build_engine(fp32_onnx, engine.path.parent / "narrow.engine", TensorRTOptions(), BatchProfile(4, 8, 16))
    with TensorRTRunner(narrow.path) as runner:
        _assert_close(runner.infer(val_images[:3]), ort_logits[:3])  # padded up to 4
        _assert_close(runner.infer(val_images[:40]), ort_logits[:40])  # 16 + 16 + 8


def test_cuda_graph_replays_batch_1(engine, val_images, ort_logits):
    """Batch 1 -> 8 -> 1: the graph has its own context, so the batch-8 rebinding cannot touch what it replays."""
    with TensorRTRunner(engine.path, cuda_graph=True) as runner:
        outputs = [runner.infer(val_images[i : i + 1]) for i in range(4)]
        _assert_close(runner.infer(val_images[:8]), ort_logits[:8])  # other shapes still run plainly
        started = time.perf_counter()
        again = runner.infer(val_images[:1])
        end_to_end_ms = (time.perf_counter() - started) * 1e3
        assert runner.describe()["cuda_graph"] == "batch 1", runner.describe()
        assert runner._graph_slot.graph is not None and runner._graph_slot.context is not runner._context
        assert 0 < runner.device_ms() <= end_to_end_ms
    _assert_close(np.concatenate(outputs), ort_logits[:4])
    np.testing.assert_array_equal(again, outputs[0])


def test_benchmark_reports_gpu_compute_and_end_to_end(engine, val_images):
    with TensorRTRunner(engine.path) as runner:
        rows = benchmark(runner, val_images[:8], BenchmarkOptions(batch_sizes=(1, 8), warmup=3, iterations=20))
    for row in rows:
        assert 0 < row.gpu_p50_ms <= row.p50_ms and row.gpu_mean_ms > 0  # compute is part of the end-to-end time


def test_builder_config_applies_every_option(fp32_onnx, tmp_path):
    import tensorrt as trt
    import torch

    from resnet_deploy.engines.trt import version_tuple

    ampere = torch.cuda.get_device_capability() >= (8, 0)
    options = TensorRTOptions(
        workspace_mib=256,
        builder_optimization_level=2,
        tf32=True,
        version_compatible=True,
        hardware_compat=HardwareCompat.AMPERE_PLUS if ampere else HardwareCompat.NONE,
    )
    chain = engine_build_chain(fp32_onnx.path, tmp_path / "m.engine", "input", (3, 32, 32), options, BatchProfile(1, 4, 8))
    builder, network, _parser = chain.network()
    config = chain.builder_config(builder, network)
    assert config.get_memory_pool_limit(trt.MemoryPoolType.WORKSPACE) == 256 << 20
    assert config.builder_optimization_level == 2
    assert config.get_flag(trt.BuilderFlag.TF32) and config.get_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if ampere:
        assert config.hardware_compatibility_level == trt.HardwareCompatibilityLevel.AMPERE_PLUS
    if version_tuple(trt.__version__) < (11,):  # TensorRT 11 networks are strongly typed without the flag
        assert network.get_flag(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def test_build_target_tensorrt_end_to_end(workload, tmp_path):
    out = tmp_path / "out"
    args = build_args(
        workload, out, "--target", "onnxruntime,tensorrt", "--engines", "onnxruntime", "--require-engine", "--cuda-graph"
    )
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    engines = {e["name"]: e for e in report["engines"]}
    assert set(engines) == {"onnxruntime-fp32", "tensorrt-fp32"}
    trt_row = engines["tensorrt-fp32"]
    assert trt_row["error"] is None and trt_row["path"] == str(out / "model.fp32.engine")
    assert trt_row["accuracy"]["top1_agreement"] >= 0.99 and trt_row["accuracy"]["nonfinite_outputs"] == 0
    assert [row["batch_size"] for row in trt_row["latency"]] == [1, 4]
    assert all(0 < row["gpu_p50_ms"] <= row["p50_ms"] for row in trt_row["latency"])
    assert trt_row["details"]["runtime"]["cuda_graph"] == "batch 1" and report["versions"]["tensorrt"]
    assert trt_row["details"]["engine"]["profile"] == {"min": 1, "opt": 4, "max": 4}
    assert report["notes"] == []

    # the engine is usable on its own, and one built elsewhere is refused before TensorRT deserializes it
    engine = out / "model.fp32.engine"
    result = CliRunner().invoke(cli, ["bench", "--engine", str(engine), "--batch-sizes", "1,4", "--iterations", "5", "-q"])
    assert result.exit_code == 0, result.output
    manifest = json.loads(sidecar_path(engine).read_text())
    sidecar_path(engine).write_text(json.dumps({**manifest, "tensorrt_version": "9.0.0.1"}))
    with pytest.raises(UserError, match=r"built with TensorRT 9\.0\.0\.1 on .*this machine has TensorRT"):
        TensorRTRunner(engine).__enter__()
    assert EngineArtifact.read(engine).tensorrt_version == "9.0.0.1"


def test_version_compatible_engine_is_built_as_bytes_and_loads(fp32_onnx, tmp_path, val_images, ort_logits):
    """A version-compatible engine cannot be serialized again after deserialization: it is written as built."""
    options = TensorRTOptions(
        workspace_mib=64, tf32=True, version_compatible=True, hardware_compat=HardwareCompat.SAME_CC, builder_optimization_level=2
    )
    try:
        engine = build_engine(fp32_onnx, tmp_path / "vc.engine", options, BatchProfile(1, 8, 8))
    except MissingDependency as exc:  # a TensorRT without HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY
        pytest.skip(str(exc))
    assert engine.build["version_compatible"] is True and engine.build["hardware_compat"] == "same-cc"
    with TensorRTRunner(engine.path) as runner:
        _assert_close(runner.infer(val_images[:8]), ort_logits[:8], rel=1e-2)  # TF32


def _ort_cpu(model, images):
    with OrtRunner(model.path, "cpu", model.precision, model.target) as runner:
        return runner.infer(images)


@pytest.mark.parametrize(
    ("model_key", "datatype", "rel"), [("fp16", "fp16", 2e-2), ("int8", "int8", 5e-2), ("int8-twin", "int8", 5e-2)]
)
def test_reduced_precision_engines_run_their_kernels(reduced, tmp_path, val_images, model_key, datatype, rel):
    """FP16 and INT8 (Q/DQ, FP32 or FP16 elsewhere) engines: the engine inspector shows FP16 / INT8 layers, and
    the outputs agree with ONNX Runtime (CPU) on the same ONNX within the precision's tolerance."""
    model = reduced[model_key]
    engine = build_engine(model, tmp_path / "m.engine", TensorRTOptions(builder_optimization_level=2), BatchProfile(1, 8, 32))
    datatypes = engine_layer_datatypes(engine.path)
    assert datatypes.get(datatype, 0) > 0, datatypes
    with TensorRTRunner(engine.path) as runner:
        out = runner.infer(val_images[:32])
    ref = _ort_cpu(model, val_images[:32])
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.95
    assert np.abs(out - ref).max() <= rel * np.abs(ref).max()


def test_a_truncated_engine_is_refused(engine, tmp_path):
    import shutil

    copy = tmp_path / engine.path.name
    shutil.copy(engine.path, copy)
    shutil.copy(sidecar_path(engine.path), sidecar_path(copy))
    copy.write_bytes(copy.read_bytes()[: copy.stat().st_size // 2])
    with pytest.raises(UserError, match="changed after it was written"):  # the manifest's sha256
        TensorRTRunner(copy)
    manifest = json.loads(sidecar_path(copy).read_text())
    sidecar_path(copy).write_text(json.dumps({**manifest, "sha256": sha256_file(copy)}))
    with pytest.raises(CheckFailed, match="TensorRT could not load") as info:  # TensorRT itself refuses it, in one line
        TensorRTRunner(copy).__enter__()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("providers", ["cuda", "tensorrt"])
@pytest.mark.parametrize("model_key", ["fp32", "int8"])
def test_onnxruntime_gpu_providers_run_or_refuse_in_one_line(reduced, tmp_path, val_images, providers, model_key):
    """onnxruntime-gpu 1.24 is built for CUDA 12 and TensorRT 10: on a CUDA-13 / TensorRT-11 machine its providers
    may not start. Either they run and agree with the CPU, or they refuse with one line."""
    model = reduced[model_key]
    runner = OrtRunner(
        model.path, f"ort-{providers}", model.precision, model.target, parse_providers(providers), None,
        OrtTensorrtOptions(profile=(1, 8, 32), cache_root=tmp_path),
    )  # fmt: skip
    try:
        runner.__enter__()
    except MissingDependency as exc:
        assert "\n" not in str(exc) and ("could not start" in str(exc) or "lacks" in str(exc))
        return
    try:
        out = runner.infer(val_images[:32])
        assert runner.simulated_int8 == (providers == "cuda" and model.precision == "int8")
    finally:
        runner.__exit__(None, None, None)
    ref = _ort_cpu(model, val_images[:32])
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.95
