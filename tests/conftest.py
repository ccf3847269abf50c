"""Shared fixtures: a ResNet-18 really trained on the digits (once per session) and one real build."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from resnet_deploy.calibration.methods import CalibrationMethod
from resnet_deploy.examples import digits
from resnet_deploy.options import Target

torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def workload(tmp_path_factory) -> digits.DigitsWorkload:
    """Digits PNG folders (train/calib/val) and a trained resnet18 `weights.pth` (~99% val top-1)."""
    return digits.make_workload(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="session")
def loaded(workload):
    from resnet_deploy.models import load_model

    return load_model(digits.ARCH, workload.weights, input_size=digits.INPUT_SIZE)


@pytest.fixture(scope="session")
def val_images(loaded, workload) -> np.ndarray:
    from resnet_deploy.data import first_images, open_dataset

    return first_images(open_dataset(workload.val, loaded.preprocess), 64)


@pytest.fixture(scope="session")
def fp32_onnx(loaded, val_images, tmp_path_factory):
    """The folded digits model exported to ONNX (an OnnxArtifact)."""
    from resnet_deploy.pipeline.export import export_onnx
    from resnet_deploy.pipeline.fold import fold_and_verify

    folded, result = fold_and_verify(loaded, val_images[:32])
    return export_onnx(folded, loaded.info, val_images[:32], tmp_path_factory.mktemp("onnx") / "model.fp32.onnx")


@pytest.fixture(scope="session")
def calib_dataset(workload, loaded):
    from resnet_deploy.data import open_dataset

    return open_dataset(workload.calib, loaded.preprocess, option="--calib-data")


@pytest.fixture(scope="session")
def calibration(fp32_onnx, calib_dataset):
    """One statistics pass over the digits calibration split (all of it: 270 < 512), read as entropy."""
    from resnet_deploy.calibration.calibrate import CalibrationSet, calibrate
    from resnet_deploy.calibration.methods import CalibrationOptions

    return calibrate(fp32_onnx, CalibrationSet.draw(calib_dataset, 512, 0), CalibrationOptions())


CASES = [(method, target) for method in CalibrationMethod for target in Target]  # every INT8 recipe x method


@pytest.fixture(scope="session")
def example(calib_dataset):
    from resnet_deploy.data import first_images

    return first_images(calib_dataset, 1)


@pytest.fixture(scope="session")
def modelopt():
    """One ModelOpt worker process for the session's tensorrt-target quantizations (importing ModelOpt takes seconds:
    quantize_int8 without a session starts a worker of its own each time, which test_cpu_int8 still checks)."""
    from resnet_deploy.calibration.quantize import ModelOptSession

    with ModelOptSession() as session:
        yield session


@pytest.fixture(scope="session")
def quantized(fp32_onnx, calibration, example, modelopt, tmp_path_factory):
    """Every method x target from the same statistics (no second pass), plus FP16 and the TensorRT FP16 twin."""
    from resnet_deploy.calibration.fp16 import convert_fp16
    from resnet_deploy.calibration.quantize import quantize_int8

    folder = tmp_path_factory.mktemp("quantized")
    models = {}
    for method, target in CASES:
        twin = folder / "int8-tensorrt.fp16.onnx" if (method, target) == (CalibrationMethod.ENTROPY, Target.TENSORRT) else None
        made = quantize_int8(
            fp32_onnx,
            calibration.with_method(method, 99.99),
            target,
            folder / f"int8-{target}-{method}.onnx",
            example,
            None,
            twin,
            modelopt,
        )
        models[(method, target)] = made[0]
        if twin is not None:
            models["tensorrt-fp16-twin"] = made[1]
    models["fp16"] = convert_fp16(fp32_onnx, calibration, folder / "fp16.onnx")
    return models


# What `resnet-deploy build` writes into OUT (FP32 only), sorted.
BUILD_FILES = [
    "model.folded.safetensors",
    "model.folded.safetensors.json",
    "model.fp32.onnx",
    "model.fp32.onnx.json",
    "report.html",
    "report.json",
    "report.md",
]


def build_args(workload, out: Path, *extra: str) -> list[str]:
    return [
        "build",
        "--arch", digits.ARCH,
        "--weights", str(workload.weights),
        "--input-size", "3x32x32",
        "--calib-data", str(workload.calib),
        "--val-data", str(workload.val),
        "--out", str(out),
        "--batch-sizes", "1,4",
        "--warmup", "2",
        "--iterations", "10",
        "--quiet",
        *extra,
    ]  # fmt: skip


QUICK = ("--batch-sizes", "1", "--warmup", "1", "--iterations", "3")


@pytest.fixture(scope="session")
def built_reduced(workload, tmp_path_factory):
    """A real build with every precision and both INT8 targets, through click: (exit code, stdout, OUT)."""
    from click.testing import CliRunner

    from resnet_deploy.cli import cli

    out = tmp_path_factory.mktemp("reduced") / "out"
    args = build_args(workload, out, "--precision", "fp32,fp16,int8", "--target", "onnxruntime,tensorrt", *QUICK)
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    return result.exit_code, result.output, out


def accurate_or_flagged(row: dict, threshold: float) -> None:
    """An engine row of a reduced-precision model in a report: the model itself (its exact ONNX semantics) agrees with
    PyTorch on at least `threshold`; so does the engine as run here, unless its kernels lose more than the kernel-loss
    margin, which only a CPU without VNNI does (16-bit saturation) and which the row then says, with the cause."""
    from resnet_deploy.isa import host_isa
    from resnet_deploy.pipeline.kernels import KERNEL_LOSS_POINTS

    exact, as_run = row["reference_accuracy"]["top1_agreement"], row["accuracy"]["top1_agreement"]
    assert exact >= threshold, (row["name"], exact)
    lost = round((exact - as_run) * 100.0, 9)
    assert (row["kernel_loss"] is not None) == (lost > KERNEL_LOSS_POINTS), (row["name"], lost, row["kernel_loss"])
    if row["kernel_loss"] is None:
        assert as_run >= threshold, (row["name"], as_run)
    else:
        assert host_isa().saturates_u8s8, row["kernel_loss"]  # a VNNI CPU's kernels do not lose this
        assert "has no VNNI" in row["kernel_loss"] and row["name"] in row["kernel_loss"]


@pytest.fixture(scope="session")
def built(workload, tmp_path_factory):
    """One real `resnet-deploy build` of the digits model, through click: (exit code, stdout, OUT)."""
    from click.testing import CliRunner

    from resnet_deploy.cli import cli

    out = tmp_path_factory.mktemp("build") / "out"
    result = CliRunner().invoke(cli, build_args(workload, out), catch_exceptions=False)
    return result.exit_code, result.output, out


def console_script() -> Path:
    """The installed `resnet-deploy` next to this Python (the venv's console script)."""
    path = Path(sys.executable).parent / "resnet-deploy"
    if not path.exists():
        found = shutil.which("resnet-deploy")
        assert found, "the resnet-deploy console script is not installed; pip install -e ."
        path = Path(found)
    return path


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(console_script()), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need TensorRT and an NVIDIA GPU: skip them here, saying which is missing."""
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    from resnet_deploy.engines.trt import missing_message, missing_requirements

    missing = missing_requirements()
    if missing:
        skip = pytest.mark.skip(reason=f"{missing_message(missing)} (on a GPU machine: scripts/gpu-check.sh)")
        for item in gpu_items:
            item.add_marker(skip)


def one_error_line(result, message: str) -> str:
    """A click result that refused with exit 2 and a single `error:` line containing `message`."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    return lines[0]
