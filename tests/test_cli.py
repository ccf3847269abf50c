"""The CLI end to end: a real build, the report's public keys, stage subcommands, every bad input."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from resnet_deploy.cli import cli
from resnet_deploy.examples import digits

from .conftest import BUILD_FILES, build_args, run_cli


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_build_writes_everything(built):
    code, output, out = built
    assert code == 0, output
    assert sorted(p.name for p in out.iterdir()) == BUILD_FILES
    assert "onnxruntime-fp32" in output and "pytorch-fp32" in output
    assert not list(out.parent.glob(".out.partial-*"))  # the staging folder was moved into place


def test_report_json_public_keys(built):
    _, _, out = built
    report = json.loads((out / "report.json").read_text())
    assert report["schema"] == "resnet-deploy/report/v1"
    assert set(report["model"]) >= {"arch", "weights_sha256", "num_classes", "input_shape"}
    assert report["model"]["input_shape"] == [3, 32, 32] and report["model"]["num_classes"] == 10
    assert set(report["fold"]) >= {"folded", "remaining_batchnorm", "max_abs_diff"}
    assert report["fold"]["folded"] == 20 and report["fold"]["remaining_batchnorm"] == 0
    assert set(report["export"]) >= {"path", "opset", "max_abs_diff"}
    assert [row["batch_size"] for row in report["reference"]["latency"]] == [1, 4]
    engine, *others = report["engines"]  # the others: OpenVINO's (tests/test_openvino.py)
    assert [e["backend"] for e in others] in ([], ["openvino"])
    assert engine["name"] == "onnxruntime-fp32" and engine["backend"] == "onnxruntime"
    assert engine["precision"] == "fp32" and engine["target"] is None
    assert engine["path"] == str(out / "model.fp32.onnx")
    accuracy = engine["accuracy"]
    assert set(accuracy) >= {
        "top1_agreement", "top5_agreement", "max_abs_diff", "mean_abs_diff", "cosine_min", "cosine_mean",
        "top1", "top1_ref", "top1_drop_points",
    }  # fmt: skip
    assert accuracy["top1_agreement"] == 1.0 and accuracy["top1"] > 0.9
    assert 0 <= accuracy["top1_agreement"] <= 1 and 0 <= accuracy["top5_agreement"] <= 1
    for row in engine["latency"]:
        assert set(row) >= {"batch_size", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "mean_ms", "throughput_ips"}
        assert row["p50_ms"] <= row["p99_ms"]
    assert {"torch", "onnx", "onnxruntime"} <= set(report["versions"])
    assert report["host"]["cpu"] and report["host"]["threads"] >= 1
    assert set(report["stages"]) >= {"load", "fold", "export", "validate", "benchmark"}
    assert report["data"]["val"]["skipped"] == 0 and report["data"]["val"]["labels"] is True


def test_report_markdown_is_readable(built):
    _, _, out = built
    text = (out / "report.md").read_text()
    assert "| onnxruntime-fp32 |" in text and "pytorch-fp32 (reference)" in text and "b4 p50" in text


def test_existing_out_is_not_overwritten_without_force(built, workload):
    _, _, out = built
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    result = invoke(*build_args(workload, out))
    assert result.exit_code == 2
    assert "already exists; pass --force" in result.output
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def _bad_inputs(workload, tmp_path):
    pickled = tmp_path / "whole.pth"
    import torch

    from resnet_deploy.models import create_model, resolve_arch

    torch.save(create_model(resolve_arch("resnet18"), 10), pickled)
    empty = tmp_path / "empty"
    empty.mkdir()
    return {
        "missing weights": (["--weights", str(tmp_path / "nope.pth")], "does not exist"),
        "unknown arch": (["--arch", "resnet-fifty"], "not a ResNet-family architecture"),
        "wrong arch": (["--arch", "resnet34"], "did you mean --arch resnet18"),
        "pickled model": (["--weights", str(pickled)], "never unpickles"),
        "bad input size": (["--input-size", "3x32"], "--input-size"),
        "missing val data": (["--val-data", str(tmp_path / "none")], "does not exist"),
        "empty val data": (["--val-data", str(empty)], "holds no images"),
        "bad precision": (["--precision", "int4"], "unknown value 'int4'"),
        "bad provider": (["--providers", "rocm"], "unknown execution provider"),
        "bad batch sizes": (["--batch-sizes", "1,x"], "--batch-sizes"),
        "zero threads": (["--threads", "0"], "--threads must be between 1 and 1024, got 0"),
        "weights of 1000 classes": (["--num-classes", "1000"], "mis-shaped"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing weights", "unknown arch", "wrong arch", "pickled model", "bad input size", "missing val data",
        "empty val data", "bad precision", "bad provider", "bad batch sizes", "zero threads", "weights of 1000 classes",
    ],
)  # fmt: skip
def test_bad_input_exits_2_with_one_line_and_writes_nothing(workload, tmp_path, case):
    override, message = _bad_inputs(workload, tmp_path)[case]
    out = tmp_path / "out"
    before = set(tmp_path.iterdir())
    args = build_args(workload, out)
    for i in range(0, len(override), 2):  # later options win in click
        args += [override[i], override[i + 1]]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert "Traceback" not in result.output
    assert set(tmp_path.iterdir()) == before  # no OUT, no staging folder left behind


def test_debug_shows_the_traceback(workload, tmp_path):
    args = build_args(workload, tmp_path / "o", "--arch", "resnet-fifty", "--debug")
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and "Traceback" in result.output


def test_config_file_with_flag_override(workload, tmp_path):
    config = tmp_path / "build.toml"
    config.write_text(f'arch = "resnet18"\nweights = "{workload.weights}"\nval_data = "{workload.val}"\nthreads = 0\n')
    result = invoke("build", "--config", str(config), "--out", str(tmp_path / "o"), "--input-size", "3x32x32")
    assert result.exit_code == 2 and "key 'threads' must be between 1 and 1024, got 0" in result.output
    config.write_text('arch = "resnet18"\nwieghts = "w.pth"\n')
    result = invoke("build", "--config", str(config))
    assert result.exit_code == 2 and "unknown key 'wieghts'" in result.output and "weights" in result.output
    config.write_text("arch = 18\n")
    result = invoke("build", "--config", str(config))
    assert result.exit_code == 2 and "'arch' must be a string" in result.output


@pytest.mark.parametrize("command", ["build", "fold", "export", "validate", "bench", "gate", "compare", "report", "layers"])
def test_help_shows_an_example(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0 and "Example:" in result.output and f"resnet-deploy {command}" in result.output


def test_stage_subcommands_chain_on_files(workload, tmp_path):
    folded = tmp_path / "m.folded.safetensors"
    onnx_path = tmp_path / "m.onnx"
    common = ["--quiet"]
    result = invoke("fold", "--arch", "resnet18", "--weights", str(workload.weights), "--input-size", "3x32x32",
                    "--data", str(workload.calib), "--out", str(folded), *common)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "folded 20 BatchNorm layers, 0 remain" in result.output
    result = invoke("export", "--folded", str(folded), "--data", str(workload.calib), "--out", str(onnx_path), *common)
    assert result.exit_code == 0, result.output
    result = invoke("validate", "--arch", "resnet18", "--weights", str(workload.weights), "--input-size", "3x32x32",
                    "--onnx", str(onnx_path), "--val-data", str(workload.val),
                    "--json", str(tmp_path / "v.json"), *common)  # fmt: skip
    assert result.exit_code == 0, result.output
    validated = json.loads((tmp_path / "v.json").read_text())
    assert validated["engines"][0]["accuracy"]["top1_agreement"] == 1.0
    result = invoke("bench", "--onnx", str(onnx_path), "--batch-sizes", "1,2", "--warmup", "1", "--iterations", "3",
                    "--json", str(tmp_path / "b.json"), *common)  # fmt: skip
    assert result.exit_code == 0, result.output
    bench = json.loads((tmp_path / "b.json").read_text())
    assert [row["batch_size"] for row in bench["engines"][0]["latency"]] == [1, 2]
    # the fold output refuses to be overwritten, and a tampered file is caught
    result = invoke("fold", "--arch", "resnet18", "--weights", str(workload.weights), "--out", str(folded), *common)
    assert result.exit_code == 2 and "already exists" in result.output
    folded.write_bytes(folded.read_bytes()[:-8] + b"\0" * 8)
    result = invoke("export", "--folded", str(folded), "--out", str(tmp_path / "m2.onnx"), *common)
    assert result.exit_code == 2 and "changed after it was written" in result.output


def test_console_script_runs_a_build(workload, tmp_path):
    """The installed entry point (not click's test runner): real process, real exit codes."""
    out = tmp_path / "out"
    proc = run_cli(*build_args(workload, out, "--precision", "fp32", "--threads", "1"))
    assert proc.returncode == 0, proc.stderr
    assert (out / "report.json").is_file() and "onnxruntime-fp32" in proc.stdout
    proc = run_cli("build", "--arch", digits.ARCH, "--weights", str(tmp_path / "missing.pth"),
                   "--val-data", str(workload.val), "--out", str(tmp_path / "o2"))  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error:")
