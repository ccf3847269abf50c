"""Reduced precision through the CLI: a real build with every precision and both INT8 targets, the report's
engine rows, artifacts an engine builder can consume, cache reuse across builds, and `resnet-deploy quantize`."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from resnet_deploy.artifacts import OnnxArtifact
from resnet_deploy.cli import cli
from resnet_deploy.config import load_toml_options
from resnet_deploy.engines.trt import missing_requirements
from resnet_deploy.examples import digits
from resnet_deploy.files import sha256_file

from .conftest import QUICK, accurate_or_flagged, build_args

TENSORRT_HERE = not missing_requirements()  # TensorRT and an NVIDIA GPU: the TensorRT engines are built
ENGINES = ["onnxruntime-fp32", "onnxruntime-fp16", "onnxruntime-int8", "onnxruntime-int8-tensorrt"]


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_build_writes_every_precision(built_reduced):
    code, output, out = built_reduced
    assert code == 0, output
    names = {p.name for p in out.iterdir()}
    for model in ["model.fp32.onnx", "model.fp16.onnx", "model.int8-onnxruntime.onnx", "model.int8-tensorrt.onnx"]:
        assert {model, f"{model}.json"} <= names
    assert {"model.int8-tensorrt.fp16.onnx", "model.int8-tensorrt.fp16.onnx.json", "calib.json", "report.json"} <= names
    for engine in ENGINES:
        assert engine in output
    assert "warning" not in output  # calib and val are different files


def test_report_rows_carry_precision_target_and_quantization(built_reduced):
    _, _, out = built_reduced
    report = json.loads((out / "report.json").read_text())
    all_rows = {row["name"]: row for row in report["engines"]}
    rows = {name: row for name, row in all_rows.items() if row["backend"] == "onnxruntime"}
    assert list(rows) == ENGINES
    # --target tensorrt also plans TensorRT engines: FP32, FP16 and INT8 (built from the FP16-elsewhere twin);
    # without TensorRT or a GPU they are recorded as not built, with the reason; with both they are built and validated
    trt = {name: row for name, row in all_rows.items() if row["backend"] == "tensorrt"}
    assert list(trt) == ["tensorrt-fp32", "tensorrt-fp16", "tensorrt-int8"]
    if TENSORRT_HERE:
        for row in trt.values():
            assert row["error"] is None and row["path"] == str(out / f"model.{row['precision']}.engine")
            assert row["accuracy"]["top1_agreement"] >= {"fp32": 0.99, "fp16": 0.99, "int8": 0.98}[row["precision"]]
    else:
        assert all(row["error"].startswith("not built") and row["path"] is None for row in trt.values())
    assert trt["tensorrt-int8"]["quantization"]["same_qdq_as"] == "model.int8-tensorrt.onnx"
    assert [(r["precision"], r["target"]) for r in rows.values()] == [
        ("fp32", None),
        ("fp16", None),
        ("int8", "onnxruntime"),
        ("int8", "tensorrt"),
    ]
    assert rows["onnxruntime-fp32"]["quantization"] is None
    # OpenVINO runs the same files side by side (the default, as it is installed), in the same order
    openvino = {name: row for name, row in all_rows.items() if row["backend"] == "openvino"}
    assert list(openvino) == ["openvino-fp32", "openvino-fp16", "openvino-int8", "openvino-int8-tensorrt"]
    for name, row in openvino.items():
        twin = rows[name.replace("openvino", "onnxruntime")]
        assert (row["path"], row["precision"], row["target"], row["quantization"]) == (
            twin["path"], twin["precision"], twin["target"], twin["quantization"]
        )  # fmt: skip
        threshold = {"fp32": 1.0, "fp16": 0.995, "int8": 0.98}[row["precision"]]
        if row["precision"] == "fp32":
            assert row["accuracy"]["top1_agreement"] >= threshold and row["reference_accuracy"] is None
        else:  # the model meets it; the engine as run too, or (no VNNI: 16-bit saturation) the row says why not
            accurate_or_flagged(row, threshold)
    assert openvino["openvino-int8"]["accuracy"]["top1_agreement"] >= 0.99  # the default CPU INT8 engine
    assert openvino["openvino-int8"]["kernel_loss"] is None  # made for this CPU: its kernels lose nothing
    for name in ("onnxruntime-int8", "onnxruntime-int8-tensorrt"):
        q = rows[name]["quantization"]
        assert q["method"] == "entropy" and q["samples"] == 270 and q["quantized_nodes"] >= 20 and q["excluded_nodes"] == []
        assert rows[name]["accuracy"]["top1_agreement"] >= 0.98 and rows[name]["passed"] and rows[name]["kernel_loss"] is None
        assert rows[name]["reference_accuracy"]["top1_agreement"] >= 0.98  # the model under its exact semantics
    assert rows["onnxruntime-int8"]["quantization"]["cpu"]["kind"] == report["host"]["isa"]["kind"]
    assert rows["onnxruntime-fp16"]["quantization"]["fp16_nodes"] > 40
    assert rows["onnxruntime-fp16"]["accuracy"]["top1_agreement"] >= 0.995
    assert report["calibration"]["samples"] == 270 and report["calibration"]["reused_cache"] is False
    assert report["calibration"]["path"] == str(out / "calib.json")
    assert {"calibrate", "fp16", "quantize-onnxruntime", "quantize-tensorrt"} <= set(report["stages"])
    assert any("model.int8-tensorrt.fp16.onnx" in note for note in report["notes"])
    markdown = (out / "report.md").read_text()
    assert "## Reduced precision" in markdown and "exact top-1 agree" in markdown
    assert f"INT8 instruction sets: {report['host']['isa']['summary']}" in markdown
    for engine in ENGINES:
        assert f"| {engine} |" in markdown


def test_artifacts_are_complete_for_an_engine_builder(built_reduced):
    _, _, out = built_reduced
    fp32_sha = sha256_file(out / "model.fp32.onnx")
    expected = {
        "model.fp16.onnx": ("fp16", None, "fp16"),
        "model.int8-onnxruntime.onnx": ("int8", "onnxruntime", "quantization"),
        "model.int8-tensorrt.onnx": ("int8", "tensorrt", "quantization"),
        "model.int8-tensorrt.fp16.onnx": ("int8", "tensorrt", "quantization"),
    }
    for name, (precision, target, key) in expected.items():
        artifact = OnnxArtifact.read(out / name)  # checks kind and sha256
        assert (artifact.precision, artifact.target, artifact.source_sha256) == (precision, target, fp32_sha)
        assert artifact.input_name == "input" and artifact.num_classes == 10 and artifact.preprocess["input_size"] == [3, 32, 32]
        assert artifact.details[key]["samples"] == 270 and artifact.details[key]["onnx_sha256"] == fp32_sha
    trt = OnnxArtifact.read(out / "model.int8-tensorrt.fp16.onnx").details["quantization"]
    assert trt["high_precision_dtype"] == "fp16" and trt["same_qdq_as"] == "model.int8-tensorrt.onnx"
    assert OnnxArtifact.read(out / "model.int8-tensorrt.onnx").details["quantization"]["high_precision_dtype"] == "fp32"


def test_second_build_reuses_the_calibration_and_warns_about_overlap(built_reduced, workload, tmp_path):
    _, _, first = built_reduced
    out = tmp_path / "again"
    args = build_args(workload, out, "--precision", "int8", "--calib-cache", str(first / "calib.json"), *QUICK)
    args[args.index("--val-data") + 1] = str(workload.calib)  # validate on the calibration images: must warn
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "warning: 270 of the 270 calibration images are also validation images" in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["calibration"]["reused_cache"] is True and report["warnings"]
    assert [row["name"] for row in report["engines"]] == ["onnxruntime-int8", "openvino-int8"]
    first_ranges = json.loads((first / "calib.json").read_text())["tensors"]
    assert json.loads((out / "calib.json").read_text())["tensors"] == first_ranges


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--precision", "int8", "--calib-method", "kl"), "--calib-method: unknown method 'kl'"),
        (("--precision", "int8", "--percentile", "10"), "--percentile must be in (50, 100]"),
        (("--precision", "int8", "--exclude-layers", "conv["), "not a valid regular expression"),
        (("--precision", "int8", "--calib-size", "0"), "--calib-size must be between 1 and"),
    ],
)
def test_bad_precision_options_exit_2(workload, tmp_path, extra, message):
    result = invoke(*build_args(workload, tmp_path / "out", *extra))
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "out").exists()


def test_int8_without_calibration_data_exits_2(workload, tmp_path):
    args = build_args(workload, tmp_path / "out", "--precision", "fp16,int8")
    position = args.index("--calib-data")
    del args[position : position + 2]
    result = invoke(*args)
    assert result.exit_code == 2 and "--precision fp16,int8 needs --calib-data" in result.output


def test_quantize_subcommand_and_its_cache(built, workload, tmp_path):
    _, _, built_out = built
    fp32 = built_out / "model.fp32.onnx"
    common = ["quantize", "--onnx", str(fp32), "--calib-data", str(workload.calib), "--calib-size", "64", "--quiet"]
    first = invoke(*common, "--out", str(tmp_path / "model.int8.onnx"))
    assert first.exit_code == 0, first.output
    assert "int8 (onnxruntime)" in first.output and "written to" in first.output
    assert (tmp_path / "calib.json").is_file() and json.loads((tmp_path / "calib.json").read_text())["samples"] == 64
    artifact = OnnxArtifact.read(tmp_path / "model.int8.onnx")
    assert (artifact.precision, artifact.target) == ("int8", "onnxruntime")

    second = invoke(*common, "--precision", "fp16", "--out", str(tmp_path / "model.fp16.onnx"), "--val-data", str(workload.calib))
    assert second.exit_code == 0, second.output
    assert "warning: 64 calibration images are also in --val-data" in second.output
    assert "reused from" in second.output and OnnxArtifact.read(tmp_path / "model.fp16.onnx").precision == "fp16"

    again = invoke(*common, "--out", str(tmp_path / "model.int8.onnx"))
    assert again.exit_code == 2 and "already exists; pass --force" in again.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--precision", "int8,fp16"), "quantize writes one model"),
        (("--precision", "fp32"), "the input already is FP32"),
        (("--exclude-layers", "layer9"), "--exclude-layers 'layer9' matches no node"),
    ],
)
def test_quantize_bad_input_exits_2(built, workload, tmp_path, extra, message):
    _, _, built_out = built
    args = ["quantize", "--onnx", str(built_out / "model.fp32.onnx"), "--calib-data", str(workload.calib)]
    result = invoke(*args, "--out", str(tmp_path / "m.onnx"), *extra)
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "calib.json").exists()


def test_toml_takes_the_calibration_keys(tmp_path):
    config = tmp_path / "build.toml"
    config.write_text(
        f'arch = "{digits.ARCH}"\ncalib_size = 128\nseed = 3\ncalib_method = "percentile"\npercentile = 99\n'
        'exclude_layers = "^fc$"\ncalib_cache = "old/calib.json"\ntarget = "tensorrt"\n'
    )
    options = load_toml_options(config)
    assert options["calib_size"] == 128 and options["percentile"] == 99 and options["calib_method"] == "percentile"
    assert options["calib_cache"] == str((tmp_path / "old/calib.json").resolve())
