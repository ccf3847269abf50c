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
from resnet_deploy.config import Target
from resnet_deploy.examples import digits

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
def quantized(fp32_onnx, calibration, example, tmp_path_factory):
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
