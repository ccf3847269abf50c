"""Triton model repositories from the digits build, served for real by a tritonserver (Python backend, CPU).

The server is the nvidia-pytriton wheel's (`make install` puts it into .venv/tritonserver) or a tritonserver on
PATH; the tests that start one skip, saying why, only where that binary cannot start here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from resnet_deploy.cli import cli
from resnet_deploy.errors import UserError
from resnet_deploy.serving.repository import (
    RepositoryOptions,
    class_labels,
    parse_config,
    read_repository,
    write_repository,
)

from .conftest import console_script, one_error_line

pytest.importorskip("tritonclient.grpc", reason="the triton extra is not installed: pip install -e '.[triton]'")

MODELS = ["resnet18-fp32-onnxruntime", "resnet18-fp32-openvino"]  # the FP32 build's engines (conftest.built)


@pytest.fixture(scope="module")
def tritonserver():
    """The tritonserver the CLI would use, once it is known to start here (its --help runs: libraries load)."""
    from resnet_deploy.errors import MissingDependency
    from resnet_deploy.serving.server import find_tritonserver

    try:
        install = find_tritonserver()
    except MissingDependency as exc:
        pytest.skip(str(exc))
    env = dict(os.environ, LD_LIBRARY_PATH=":".join(map(str, install.library_path)))
    probe = subprocess.run([str(install.binary), "--help"], capture_output=True, text=True, env=env, timeout=60)
    if "--model-repository" not in probe.stdout + probe.stderr:
        pytest.skip(f"{install.binary} cannot start here: {(probe.stderr or probe.stdout).strip()[-300:]}")
    return install


def _servers_of(repo: Path) -> list[int]:
    """Pids of the processes serving `repo` (tritonserver, its Python backend stubs), read from /proc."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            if any(str(repo) in arg for arg in argv) and "serve-check" not in argv:  # not the CLI that started it
                pids.append(int(proc.name))
    return pids


def test_servers_of_finds_a_process_by_its_arguments(tmp_path):
    """The helper the cleanup checks rely on sees a process whose arguments name the folder (tmp_path holds 'pytest')."""
    model = str(tmp_path / "repo" / "m" / "1" / "model.py")
    sleeper = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)", model], cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 10
        while sleeper.pid not in _servers_of(tmp_path / "repo") and sleeper.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sleeper.poll() is None, f"the stand-in process exited: {sleeper.stderr.read()}"
        assert sleeper.pid in _servers_of(tmp_path / "repo")
    finally:
        sleeper.kill()
        sleeper.wait()
    assert sleeper.pid not in _servers_of(tmp_path / "repo")


def test_repository_layout_configs_and_labels(built, workload, tmp_path):
    code, _, out = built
    assert code == 0
    repo = write_repository(out, tmp_path / "repo").path
    classes = sorted(p.name for p in workload.val.iterdir() if p.is_dir())
    assert sorted(p.name for p in repo.iterdir()) == MODELS
    for name, backend in zip(MODELS, ("onnxruntime_onnx", "openvino")):
        folder = repo / name
        assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == [
            "1", "1/model.onnx", "README.md", "config.pbtxt", "labels.txt",
        ]  # fmt: skip
        assert (folder / "1" / "model.onnx").read_bytes() == (out / "model.fp32.onnx").read_bytes()
        config = parse_config((folder / "config.pbtxt").read_text(), name)  # Triton's own ModelConfig, strict
        assert config.name == name and backend in (config.platform, config.backend)
        assert config.max_batch_size == 4 and list(config.dynamic_batching.preferred_batch_size) == [4]  # --batch-sizes 1,4
        assert [list(t.dims) for t in (*config.input, *config.output)] == [[3, 32, 32], [10]]
        assert config.output[0].label_filename == "labels.txt"
        assert config.parameters["preprocess.input_size"].string_value == "3x32x32"
        assert (folder / "labels.txt").read_text().splitlines() == classes
        assert "Preprocessing" in (folder / "README.md").read_text()

    python = write_repository(out, tmp_path / "py", RepositoryOptions(python_backend=True, instance_count=2)).path
    for model in read_repository(python):
        config = parse_config((model.folder / "config.pbtxt").read_text(), model.name)
        assert config.backend == "python" and config.instance_group[0].count == 2
        assert config.parameters["runtime"].string_value == model.backend
        assert (model.folder / "1" / "model.py").is_file() and model.variant == "python"


def test_labels_are_the_models_class_names_in_classifier_order(built):
    """labels.txt line i names output i: the model's class names as the report and every sidecar record them (from
    --labels they need not be in the sorted order of the --val-data folders), else the indices, with a note."""
    _, _, out = built
    report = json.loads((out / "report.json").read_text())
    sidecar = json.loads((out / "model.fp32.onnx.json").read_text())
    assert class_labels(report) == (sidecar["class_names"], None)
    named = {**report, "model": {**report["model"], "class_names": [f"class {9 - i}" for i in range(10)]}}
    assert class_labels(named) == ([f"class {9 - i}" for i in range(10)], None)
    unnamed = {**report, "model": {**report["model"], "class_names": None}}
    note = "labels.txt holds class indices: the build recorded no class names"
    assert class_labels(unnamed) == ([str(i) for i in range(10)], note)


def test_tensorrt_plans_are_chosen_by_compute_capability():
    """A TensorRT engine's model maps its manifest's compute capability to the plan (no engine is built here)."""
    from resnet_deploy.serving.kinds import NATIVE
    from resnet_deploy.serving.repository import ServedModel, TensorSpec, config_text, model_config

    model = ServedModel(
        "resnet50-int8-tensorrt", "tensorrt-int8", "tensorrt", "int8", "tensorrt", Path("model.int8.engine"), "0" * 64,
        TensorSpec("input", "TYPE_FP32", (3, 224, 224)), TensorSpec("logits", "TYPE_FP32", (1000,)), True, 8,
        {"input_size": [3, 224, 224], "interpolation": "bicubic", "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 0.95},
        {"gpu": {"name": "NVIDIA L4", "compute_capability": "8.9"}},
    )  # fmt: skip
    config = parse_config(config_text(model_config(model, NATIVE["tensorrt"], RepositoryOptions(), [1, 8])), "plan")
    assert config.platform == "tensorrt_plan" and dict(config.cc_model_filenames) == {"8.9": "model.plan"}
    assert config.instance_group[0].kind == config.instance_group[0].KIND_GPU


def test_bad_input_is_one_line_and_writes_nothing(built, workload, tmp_path):
    code, _, out = built
    runner = CliRunner()
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    one_error_line(runner.invoke(cli, ["triton", str(out), "--repo", str(taken)]), "already exists; pass --force")
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    one_error_line(runner.invoke(cli, ["triton", str(empty), "--repo", str(tmp_path / "r1")]), "has no report.json")
    report = json.loads((out / "report.json").read_text())
    no_engines = tmp_path / "no-engines"
    no_engines.mkdir()
    (no_engines / "report.json").write_text(json.dumps({**report, "engines": []}))
    one_error_line(runner.invoke(cli, ["triton", str(no_engines), "--repo", str(tmp_path / "r2")]), "has no engine files")
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "no-engines", "taken"]  # no staging folder left

    repo = write_repository(out, tmp_path / "py", RepositoryOptions(python_backend=True)).path
    check = ["serve-check", str(repo), "--val-data", str(workload.val), "--build", str(out)]
    one_error_line(runner.invoke(cli, [*check, "--tritonserver", str(tmp_path / "none")]), "does not exist")
    one_error_line(runner.invoke(cli, [*check, "--models", "resnet50-x"]), "not in the repository")
    one_error_line(runner.invoke(cli, ["serve-check", str(taken), "--val-data", str(workload.val), "--build", str(out)]),
                   "holds no models")  # fmt: skip


def test_a_port_in_use_is_refused(built, tmp_path):
    import socket

    from resnet_deploy.serving.server import check_port_free

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(UserError, match=f"port {s.getsockname()[1]} on 127.0.0.1 is in use"):
            check_port_free(s.getsockname()[1])


def test_serve_check_on_a_real_tritonserver(tritonserver, built, workload, tmp_path):
    """The Python-backend repository served for real: served logits agree with the engines in process, dynamic
    batching forms batches under load, the report gets its serving section, and no server is left running."""
    _, _, built_out = built
    out = tmp_path / "out"
    subprocess.run(["cp", "-r", str(built_out), str(out)], check=True)
    repo = tmp_path / "repo"
    runner = CliRunner()
    result = runner.invoke(cli, ["triton", str(out), "--repo", str(repo), "--python-backend", "--threads", "1"])
    assert result.exit_code == 0, result.output
    args = ["serve-check", str(repo), "--val-data", str(workload.val), "--build", str(out), "--images", "96",
            "--concurrency", "1,8", "--requests", "200", "--seconds", "20", "--threads", "1", "--quiet"]  # fmt: skip
    result = runner.invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert _servers_of(repo) == []

    from resnet_deploy.reports.schema import read_report

    report = read_report(out / "report.json")  # the schema check includes the serving section
    serving = report["serving"]
    assert [m["name"] for m in serving["models"]] == MODELS and serving["failures"] == []
    for model in serving["models"]:
        agreement = model["agreement"]
        assert agreement["images"] == 96 and agreement["top1_agreement"] == 1.0 and agreement["passed"]
        assert agreement["max_abs_diff"] <= agreement["tolerance"]
        assert [level["concurrency"] for level in model["levels"]] == [1, 8]
        for level in model["levels"]:
            assert level["requests"] == 200 == level["server"]["requests"]  # the server counted exactly the timed ones
            assert 0 < level["p50_ms"] <= level["p90_ms"] <= level["p99_ms"] and level["throughput_ips"] > 0
            assert level["server"]["queue_us"] >= 0 and level["server"]["compute_us"] > 0
        alone, loaded = model["levels"][0]["server"], model["levels"][1]["server"]
        assert alone["mean_batch"] == 1.0 and alone["batch_sizes"] == {"1": 200}  # one request in flight: nothing to batch
        assert loaded["mean_batch"] > 1.0 and max(map(int, loaded["batch_sizes"])) > 1  # the dynamic batcher at work
        assert sum(int(k) * v for k, v in loaded["batch_sizes"].items()) == loaded["inferences"] == 200
    assert "## Serving (Triton)" in (out / "report.md").read_text()
    assert 'data-plot="serving"' in (out / "report.html").read_text()


def test_a_server_that_fails_reports_its_log_and_leaves_nothing(tritonserver, built, tmp_path):
    from resnet_deploy.serving.server import TritonServer

    _, _, out = built
    repo = write_repository(out, tmp_path / "repo", RepositoryOptions(python_backend=True)).path
    (repo / MODELS[0] / "1" / "model.onnx").write_bytes(b"not an onnx model")
    server = TritonServer(tritonserver, repo, [MODELS[0]], tmp_path / "work", startup_timeout=120)
    with pytest.raises(UserError, match=r"tritonserver exited with code \d+ before it was ready: .*") as error:
        with server:
            pass
    assert "\n" not in str(error.value) and MODELS[0] in str(error.value)  # one line, naming the model that failed
    assert _servers_of(repo) == [] and server.process is None


def test_sigterm_during_serve_check_stops_the_server(tritonserver, built, workload, tmp_path):
    """SIGTERM (as Ctrl-C) while the load runs: exit 130, the server and its stubs are gone, the report unchanged."""
    _, _, built_out = built
    out = tmp_path / "out"
    subprocess.run(["cp", "-r", str(built_out), str(out)], check=True)
    before = (out / "report.json").read_bytes()
    repo = write_repository(out, tmp_path / "repo", RepositoryOptions(python_backend=True)).path
    proc = subprocess.Popen(
        [str(console_script()), "serve-check", str(repo), "--val-data", str(workload.val), "--build", str(out),
         "--models", MODELS[0], "--requests", "1000000", "--seconds", "600", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not _servers_of(repo) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _servers_of(repo), f"no server started (exit {proc.poll()})"
        time.sleep(3.0)  # into model loading or the load
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stderr
    assert _servers_of(repo) == []
    assert (out / "report.json").read_bytes() == before
