"""Accuracy-aware INT8 on the digits model: `layers`, the mixed-precision search in `quantize` and `build`.

The harsh setting: `max` calibration on a tiny set (8 training images) plus one copy of an image with a
saturated 4x4 spot, the classic way `max` goes wrong (one outlier stretches the ranges). Fully quantized,
the model then misses a 99% top-1 agreement target on the selection images; leaving a few nodes in
higher precision meets it again.
"""

from __future__ import annotations

import json
import math

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from resnet_deploy.artifacts import OnnxArtifact
from resnet_deploy.calibration import calibrate as calibrate_module
from resnet_deploy.calibration import quantize as quantize_module
from resnet_deploy.calibration.graph import load_onnx, quantized_nodes
from resnet_deploy.calibration.search import search_exclusions
from resnet_deploy.cli import cli
from resnet_deploy.errors import UserError
from resnet_deploy.options import AccuracyTarget

from .conftest import build_args, one_error_line

# The recipe is pinned to 8-bit weights (--cpu vnni), so the search sees the same numbers on every CPU: as run on a VNNI
# CPU, under the exact Q/DQ semantics elsewhere (a model made for another kind of CPU is judged that way). With the
# 7-bit weights a CPU without VNNI gets by default, the harsh setting happens to meet the target fully quantized.
TARGET = ("--min-top1-agreement", "0.99", "--cpu", "vnni")


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


@pytest.fixture(scope="module")
def harsh_calib(workload, loaded, tmp_path_factory):
    """calib.npz: 8 training images and one of them again with a saturated spot (no labels)."""
    from resnet_deploy.data import first_images, open_dataset

    images = first_images(open_dataset(workload.train, loaded.preprocess), 8)
    outlier = images[:1].copy()
    outlier[..., 10:14, 10:14] = 20.0
    path = tmp_path_factory.mktemp("harsh") / "calib.npz"
    np.savez(path, images=np.concatenate([images, outlier]).astype(np.float32))
    return path


def quantize_args(fp32_onnx, harsh_calib, workload, out, *extra: str) -> list[str]:
    return [
        "quantize", "--onnx", str(fp32_onnx.path), "--calib-data", str(harsh_calib), "--calib-method", "max",
        "--select-data", str(workload.calib), "--select-size", "135", "--val-data", str(workload.val),
        "--out", str(out), "--quiet", *extra,
    ]  # fmt: skip


def test_quantize_meets_a_tight_target_with_few_nodes_and_one_statistics_pass(
    fp32_onnx, harsh_calib, workload, tmp_path, monkeypatch
):
    passes, quantizations = [], []
    collect = calibrate_module.collect_statistics
    quantize_ort = quantize_module._quantize_onnxruntime
    monkeypatch.setattr(calibrate_module, "collect_statistics", lambda *a, **k: passes.append(1) or collect(*a, **k))
    monkeypatch.setattr(quantize_module, "_quantize_onnxruntime", lambda *a: quantizations.append(a[2]) or quantize_ort(*a))

    out = tmp_path / "model.int8.onnx"
    result = invoke(*quantize_args(fp32_onnx, harsh_calib, workload, out, *TARGET))
    search = OnnxArtifact.read(out).details["quantization"]["mixed_precision"]
    # The target is met on the 135 selection images; whether the chosen nodes also meet it on the 449 --val-data images
    # is the data's answer, not the code's (on the session-trained model it sits within an image or two of 99%, and the
    # model itself differs between CPU kinds: PyTorch's training kernels round differently). So the reported on_val is
    # checked against the written model measured here, and the exit code must follow it: 0 met, 1 missed (same name).
    on_val = _agreement_on_val(out, workload, fp32_onnx)
    assert search["on_val"]["top1_agreement"] == pytest.approx(on_val, abs=1e-9)
    assert search["on_val"]["met"] == (on_val >= 0.99)
    assert result.exit_code == (0 if on_val >= 0.99 else 1), result.output
    if result.exit_code:
        assert "met on the selection images but missed on --val-data" in result.output
    steps = search["steps"]
    assert search["met"] and search["status"] == "met"
    assert steps[0]["phase"] == "all-int8" and not steps[0]["met"]  # the harsh setting misses the target
    assert 1 <= len(search["excluded"]) <= 3
    chosen = next(s for s in steps if set(s["excluded"]) == set(search["excluded"]))
    assert chosen["met"] and chosen["top1_agreement"] >= 0.99
    # every step a real quantization with the same ranges: one statistics pass for the whole command
    assert len(passes) == 1 and len(quantizations) == len(steps)
    assert [list(q) for q in quantizations] == [s["excluded"] for s in steps]
    # the nodes left out run in FP32: they read no dequantized tensor
    model = load_onnx(out)
    assert not set(search["excluded"]) & set(quantized_nodes(model))
    assert {r["node"] for r in search["sensitivity"]} >= set(search["excluded"])
    assert search["sensitivity"] == sorted(search["sensitivity"], key=lambda r: r["sqnr_db"])
    # chosen on --select-data, reported on --val-data (disjoint)
    assert search["selection"]["origin"] == "--select-data" and search["selection"]["samples"] == 135
    assert search["on_val"]["data"] == "--val-data" and 0 < search["on_val"]["top1_agreement"] <= 1
    assert [c["batch_size"] for c in search["latency_cost"]] == [1] and search["latency_cost"][0]["after_p50_ms"] > 0
    assert "top-1 agreement >= 99.00%" in result.output and "all-int8" in result.output and "on --val-data" in result.output


def _agreement_on_val(path, workload, fp32_onnx) -> float:
    """Top-1 agreement of `path` with the FP32 model on --val-data, measured as the search measures it (--cpu vnni)."""
    from resnet_deploy.calibration.quantize import judged_exactly
    from resnet_deploy.data import Preprocess, open_dataset
    from resnet_deploy.engines.ort import OrtRunner
    from resnet_deploy.isa import CpuKind
    from resnet_deploy.options import Target
    from resnet_deploy.pipeline.validate import validate_all

    val = open_dataset(workload.val, Preprocess.from_dict(fp32_onnx.preprocess))
    exact = judged_exactly(Target.ONNXRUNTIME, CpuKind.VNNI)
    runner = OrtRunner(path, "int8", "int8", "onnxruntime", exact=exact)
    (accuracy,) = validate_all(OrtRunner(fp32_onnx.path, "fp32", "fp32"), [runner], val, fp32_onnx.num_classes)
    return accuracy.top1_agreement


def test_build_that_cannot_meet_the_target_writes_the_best_effort_and_exits_1(harsh_calib, workload, tmp_path):
    out = tmp_path / "out"
    args = build_args(workload, out, "--precision", "int8", "--calib-method", "max", *TARGET)
    args[args.index("--calib-data") + 1] = str(harsh_calib)
    args += ["--select-data", str(workload.calib), "--select-size", "135", "--max-excluded", "1"]
    result = invoke(*args)
    assert result.exit_code == 1, result.output
    best = out / "model.int8-onnxruntime.best-effort.onnx"
    assert best.is_file() and not (out / "model.int8-onnxruntime.onnx").exists()
    assert "best effort" in result.output and "FAILED onnxruntime-int8: top-1 agreement >= 99.00% not met" in result.output
    report = json.loads((out / "report.json").read_text())
    row = next(e for e in report["engines"] if e["name"] == "onnxruntime-int8")
    search = row["quantization"]["mixed_precision"]
    assert not search["met"] and search["status"] == "target missed (best effort)" and len(search["excluded"]) <= 1
    assert [s["phase"] for s in search["steps"]] == ["all-int8", "greedy"] and row["path"] == str(best)
    assert report["data"]["selection"]["origin"] == "--select-data" and search["on_val"]["data"] == "--val-data"
    assert OnnxArtifact.read(best).details["quantization"]["mixed_precision"]["met"] is False
    markdown = (out / "report.md").read_text()
    assert "### onnxruntime-int8: **TARGET MISSED: best effort**" in markdown and "| 2 | greedy | 1 |" in markdown
    html = (out / "report.html").read_text()
    assert "target missed: best effort" in html and 'data-plot="layer-sensitivity"' in html
    search["steps"][0]["top1_agreement"] = "97%"  # a report.json edited by hand is refused, not half rendered
    (tmp_path / "edited.json").write_text(json.dumps(report))
    edited = invoke("report", str(tmp_path / "edited.json"), "--html", str(tmp_path / "edited.html"))
    one_error_line(edited, "mixed_precision.steps[0].top1_agreement must be a number")


def test_layers_ranks_every_quantized_node(fp32_onnx, harsh_calib, workload, built, tmp_path):
    out = tmp_path / "layers"
    args = ["layers", "--onnx", str(fp32_onnx.path), "--calib-data", str(harsh_calib), "--calib-method", "max"]
    args += ["--select-data", str(workload.calib), "--select-size", "48", "--out", str(out), "--quiet"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "layers.json").read_text())
    nodes = data["nodes"]
    assert data["target"] == "onnxruntime" and data["selection"]["samples"] == 48 and len(nodes) >= 20
    assert all(math.isfinite(n["sqnr_db"]) and n["top1_agreement_drop_points"] is not None for n in nodes)
    drops = [n["top1_agreement_drop_points"] for n in nodes]
    assert drops == sorted(drops, reverse=True)  # worst first
    assert nodes[0]["module"] and nodes[0]["node"] in result.output and "SQNR dB" in result.output
    assert "warning: the nodes kept in higher precision are chosen on 48 images" in result.output  # 1 image = 2.1 points
    assert 'data-plot="layer-sensitivity"' in (out / "layers.html").read_text() and (out / "calib.json").is_file()
    again = invoke(*args)
    one_error_line(again, "layers.json already exists; pass --force")
    # the chart joins a build's report.html when the page is rendered with the layers data
    report = built[2] / "report.json"
    page = invoke("report", str(report), "--html", str(tmp_path / "report.html"), "--layers", str(out / "layers.json"))
    assert page.exit_code == 0, page.output
    assert 'data-plot="layer-sensitivity"' in (tmp_path / "report.html").read_text()
    wrong = invoke("report", str(report), "--html", str(tmp_path / "r.html"), "--layers", str(report))
    one_error_line(wrong, "not a resnet-deploy layers")
    one_error_line(invoke(*args, "--force", "--target", "onnxruntime,tensorrt"), "layers measures one INT8 recipe")
    one_error_line(invoke(*args, "--force", "--threads", "0"), "--threads must be between 1 and")


def test_excluding_every_quantized_node_reproduces_fp32(fp32_onnx, calibration, val_images, tmp_path):
    """The nodes left out really run in FP32: with all of them out, the INT8 model computes the FP32 model."""
    full = quantize_module.make_int8(fp32_onnx, calibration, quantize_module.Target.ONNXRUNTIME, [], val_images[:1], tmp_path)
    every = quantized_nodes(load_onnx(full["fp32"]))
    none = quantize_module.make_int8(
        fp32_onnx, calibration, quantize_module.Target.ONNXRUNTIME, every, val_images[:1], tmp_path / "none"
    )
    model = load_onnx(none["fp32"])
    assert quantized_nodes(model) == [] and not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)

    def run(path):
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": val_images})[0]

    np.testing.assert_allclose(run(none["fp32"]), run(fp32_onnx.path), atol=1e-5)


class FakeAccuracy:
    def __init__(self, agreement: float) -> None:
        self.top1_agreement, self.top1_drop_points, self.top1, self.mean_abs_diff = agreement, None, None, 0.0


def test_search_greedy_then_bisect_then_prune():
    """Only nodes b and e matter; the ranking puts e sixth: greedy 8 meets, bisect finds 6, prune keeps {b, e}."""
    ranked = ["a", "b", "c", "d", "f", "e", "g", "h", "i"]
    calls = []

    def measure(nodes):
        calls.append(frozenset(nodes))
        return FakeAccuracy(0.9 + 0.05 * ("b" in nodes) + 0.05 * ("e" in nodes))

    outcome = search_exclusions(ranked, measure, AccuracyTarget(min_top1_agreement=1.0, max_excluded=8))
    assert outcome.met and set(outcome.chosen.excluded) == {"b", "e"} and len(outcome.greedy) == 8
    phases = [s.phase for s in outcome.steps]
    assert phases[:5] == ["all-int8", "greedy", "greedy", "greedy", "greedy"] and "bisect" in phases and "prune" in phases
    assert len(calls) == len(set(calls))  # each distinct set measured once

    capped = search_exclusions(ranked, measure, AccuracyTarget(min_top1_agreement=1.0, max_excluded=3))
    assert not capped.met and capped.chosen.excluded == ("a", "b") and capped.greedy is None  # best effort: fewest nodes


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--max-top1-drop", "150"), "--max-top1-drop is in points of top-1 (0..100)"),
        (("--min-top1-agreement", "99"), "--min-top1-agreement is a fraction in (0, 1]"),
        (("--min-top1-agreement", "0.9", "--max-excluded", "-1"), "--max-excluded must be between 0 and"),
        (("--min-top1-agreement", "0.9", "--precision", "fp16"), "use --precision int8"),
        (("--max-top1-drop", "1", "--select-data", "HARSH"), "compares top-1 with labels, but the selection images"),
        (("--min-top1-agreement", "0.9", "--select-data", "VAL"), "are also in --val-data"),
    ],
)
def test_bad_accuracy_target_options_exit_2(fp32_onnx, harsh_calib, workload, tmp_path, extra, message):
    extra = tuple({"HARSH": str(harsh_calib), "VAL": str(workload.val)}.get(e, e) for e in extra)
    out = tmp_path / "m.onnx"
    args = quantize_args(fp32_onnx, harsh_calib, workload, out)
    select = args.index("--select-data")
    if "--select-data" in extra:
        del args[select : select + 2]
    one_error_line(invoke(*args, *extra), message)
    assert not out.exists() and not (tmp_path / "calib.json").exists()


def test_accuracy_target_needs_val_data_and_int8(fp32_onnx, harsh_calib, workload, tmp_path):
    args = quantize_args(fp32_onnx, harsh_calib, workload, tmp_path / "m.onnx", *TARGET)
    at = args.index("--val-data")
    one_error_line(invoke(*args[:at], *args[at + 2 :]), "an accuracy target needs --val-data")
    build = build_args(workload, tmp_path / "out", "--precision", "fp32", *TARGET)
    one_error_line(invoke(*build), "add int8 to --precision")
    assert not (tmp_path / "out").exists()


def test_toml_takes_the_accuracy_target_keys(tmp_path):
    from resnet_deploy.config import load_toml_options

    config = tmp_path / "build.toml"
    config.write_text('max_top1_drop = 0.5\nmin_top1_agreement = 0.99\nmax_excluded = 4\nselect_data = "sel"\nselect_size = 64\n')
    options = load_toml_options(config)
    assert (options["max_top1_drop"], options["min_top1_agreement"], options["max_excluded"]) == (0.5, 0.99, 4)
    assert options["select_data"] == str(tmp_path / "sel") and options["select_size"] == 64
    config.write_text("min_top1_agreement = 99\n")
    with pytest.raises(UserError, match="'min_top1_agreement' is a fraction in"):
        load_toml_options(config)
