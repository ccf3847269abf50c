"""Every script under benchmarks/ runs to the end in its quick mode, on this CPU, and prints its tables.

A correctness check, not a timing: the smallest settings each script has (a ResNet-18 at 32x32, a few
calibration images, one call per engine). What the CPU cannot run is left out with a line saying why.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import REPO

pytestmark = pytest.mark.slow

SMALL = ["--arch", "resnet18", "--input-size", "3x32x32", "--threads", "2"]


def run_script(name: str, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / name), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=timeout,
    )
    assert result.returncode == 0, f"{name} failed (exit {result.returncode}):\n{result.stderr[-3000:]}"
    return result


def has_bf16() -> bool:
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def table_rows(text: str, header: str) -> list[str]:
    """The rows of the markdown table whose header line starts with `header`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def test_cpu_engines_quick(tmp_path):
    profiles = tmp_path / "profiles"
    common = ["--calib-images", "8", "--iterations", "1", "--warmup", "1", "--batch-sizes", "1,2"]
    out = run_script("cpu_engines.py", "--quick", *SMALL, *common, "--profile", str(profiles)).stdout
    part2 = out[out.index("## INT8 quantize step") : out.index("## Latency")]
    steps = ["one FP32 pass (the floor)", "statistics pass", "quantize both targets", "quantize onnxruntime alone"]
    for step in [*steps, "quantize tensorrt alone", "the whole INT8 step", "NNCF's own"]:
        assert f"- {step}" in part2, step
    assert "ModelOpt's own entropy calibration" in part2
    assert "- goal, the whole INT8 step for both targets at most 1.50x one FP32 pass" in part2
    assert "(met)" in part2 or "(NOT MET)" in part2
    for step in ("statistics", "quantize-onnxruntime", "quantize-tensorrt"):
        assert (profiles / f"{step}.prof").stat().st_size > 0 and "function calls" in (profiles / f"{step}.txt").read_text()

    engines = [row.split("|")[1].strip() for row in table_rows(out, "| engine | b1 median ms")]
    assert {"onnxruntime-fp32", "onnxruntime-int8", "openvino-int8", "peer: openvino+nncf (static)"} <= set(engines)
    if has_bf16():
        assert "openvino-bf16" in engines
    else:  # left out, saying why
        assert "openvino-bf16" not in engines
        assert "- left out openvino-bf16: this CPU has no bfloat16 instructions" in out
    assert table_rows(out, "| engine | b1 vs peer as read")
    assert "- goal, batch 2:" in out and "## What OpenVINO executes" in out


def test_excluded_nodes_quick():
    out = run_script("excluded_nodes.py", "--quick", *SMALL, "--calib-images", "8", "--iterations", "1", "--warmup", "1").stdout
    rows = table_rows(out, "| model | nodes kept in FP32")
    assert [row.split("|")[1].strip() for row in rows][:2] == ["onnxruntime-fp32", "int8, 0 in fp32"] and len(rows) == 6
    assert "Nodes by sensitivity" in out


def test_memory_quick(workload, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "digits").symlink_to(workload.root)  # the trained digits model, instead of training it again
    out = run_script("memory.py", "--quick", "--work", str(work)).stdout
    rows = table_rows(out, "| validation images | build | validate |")
    assert [row.split("|")[1].strip() for row in rows] == ["40", "80"]
    assert "2x the images: median peak" in out


def test_int8_recipes_quick(workload):
    out = run_script("int8_recipes.py", "--quick", "--digits", str(workload.root)).stdout  # the trained digits model
    assert out.startswith("# INT8 recipes on this CPU: ")
    rows = {row.split("|")[1].strip(): row.split("|")[2:5] for row in table_rows(out, "| model | ONNX Runtime as run here")}
    assert list(rows) == [
        "onnxruntime target, weights int8",
        "onnxruntime target, weights int8-7bit",
        "onnxruntime target, weights uint8",
        "tensorrt target (S8S8)",
    ]
    for name in ("onnxruntime target, weights int8-7bit", "onnxruntime target, weights uint8"):
        as_run, _, exact = (float(cell.strip().rstrip("%")) for cell in rows[name])
        # the remedies for CPUs without VNNI: ONNX Runtime's kernels compute what the model says, on every x86 CPU
        assert abs(as_run - exact) <= 0.5, (name, as_run, exact)
    latency = [row.split("|")[1].strip() for row in table_rows(out, "| engine | b1 ms")]
    assert len(latency) == 9 and latency[-1] == "peer: openvino+nncf (static)"
    assert "- goal, onnxruntime, batch 1: the 7-bit recipe at most 1.10x the 8-bit one" in out
