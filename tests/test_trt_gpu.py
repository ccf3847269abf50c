"""TensorRT on a real GPU (`pytest -m gpu`; scripts/gpu-check.sh runs them). Skipped, with the reason, on
machines without TensorRT or an NVIDIA GPU (conftest.py marks them)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from resnet_deploy.artifacts import EngineArtifact, sha256_file, sidecar_path
from resnet_deploy.cli import cli
from resnet_deploy.config import BenchmarkOptions, HardwareCompat, TensorRTOptions
from resnet_deploy.engines.ort import OrtRunner
from resnet_deploy.engines.trt import BatchProfile, TensorRTRunner, build_engine, engine_build_chain
from resnet_deploy.errors import UserError
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
    with TensorRTRunner(engine.path, cuda_graph=True) as runner:
        outputs = [runner.infer(val_images[i : i + 1]) for i in range(4)]
        _assert_close(runner.infer(val_images[:8]), ort_logits[:8])  # other shapes still run plainly
        again = runner.infer(val_images[:1])
        assert runner.describe()["cuda_graph"] == "batch 1", runner.describe()
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
    args = build_args(workload, out, "--target", "onnxruntime,tensorrt", "--require-engine", "--cuda-graph")
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
