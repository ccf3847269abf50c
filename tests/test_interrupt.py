"""Interrupted and concurrent builds, with real processes of the installed console script.

A build writes into a hidden staging folder beside OUT and moves it into place at the end. SIGINT or
SIGTERM at any stage (folding, export, validation) must leave no OUT at all (or the previous one,
untouched), and the same command must then complete. SIGKILL leaves a hidden staging folder that the
next build removes. Two builds into one OUT: the second refuses, never a mixed folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from resnet_deploy.errors import UserError
from resnet_deploy.files import InterruptHandler, staged_output_dir
from resnet_deploy.files import signals_deferred as _signals_deferred

from .conftest import BUILD_FILES, build_args, console_script

# Files that appear in the staging folder as the build goes: waiting for one means the stage after it runs.
STAGES = {
    "fold": None,  # the staging folder exists: BN folding runs
    "export": "model.folded.safetensors.json",  # the folded model is written: ONNX export runs
    "validate": "model.fp32.onnx.json",  # the ONNX is written and checked: validation runs
}


def _start(args: list[str]) -> subprocess.Popen:
    # A shell running us in the background may ignore SIGINT, and Python keeps an ignored SIGINT ignored.
    return subprocess.Popen(
        [str(console_script()), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _staging(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.partial-*"))


def _wait_for_stage(proc: subprocess.Popen, out: Path, stage: str, timeout: float = 300) -> None:
    marker = STAGES[stage]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        staging = _staging(out)
        if staging and (marker is None or (staging[-1] / marker).exists()):
            return
        if proc.poll() is not None:
            pytest.fail(f"the build ended (exit {proc.returncode}) before {stage}: {proc.stderr.read()}")
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"the build did not reach {stage} in {timeout} s")


def _interrupt(args: list[str], out: Path, stage: str, sig: signal.Signals) -> subprocess.CompletedProcess:
    proc = _start(args)
    _wait_for_stage(proc, out, stage)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())}


def _check_complete(out: Path) -> None:
    """OUT is one whole build: the expected files, each artifact matching its sidecar's sha256."""
    assert sorted(p.name for p in out.iterdir()) == BUILD_FILES
    digests = _digests(out)
    for name in ("model.folded.safetensors", "model.fp32.onnx"):
        assert json.loads((out / f"{name}.json").read_text())["sha256"] == digests[name]
    report = json.loads((out / "report.json").read_text())
    assert report["engines"][0]["accuracy"]["top1_agreement"] == 1.0


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.") and not p.name.endswith(".lock"))


def test_interrupted_builds_leave_nothing_and_the_same_command_completes(workload, tmp_path):
    out = tmp_path / "out"
    args = build_args(workload, out, "--batch-sizes", "1", "--iterations", "5", "--warmup", "1")
    verbose = [a for a in args if a != "--quiet"]  # rich's console on stderr must not swallow the signal either
    for stage, sig, command in (("fold", signal.SIGINT, args), ("export", signal.SIGTERM, verbose)):
        proc = _interrupt(command, out, stage, sig)
        assert proc.returncode == 130, (stage, proc.stderr)
        assert "interrupted: no output was left half written" in proc.stderr and "Traceback" not in proc.stderr
        assert not out.exists() and _leftovers(out) == [], (stage, _leftovers(out))

    proc = _interrupt(args, out, "validate", signal.SIGKILL)  # no cleanup possible: a hidden folder stays
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists() and len(_staging(out)) == 1

    proc = subprocess.run([str(console_script()), *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    _check_complete(out)
    assert _leftovers(out) == []  # the killed build's staging folder was removed

    # With --force, an interrupted rebuild leaves the previous build exactly as it was.
    before = _digests(out)
    proc = _interrupt([*args, "--force"], out, "validate", signal.SIGTERM)
    assert proc.returncode == 130, proc.stderr
    assert _digests(out) == before and _leftovers(out) == []


def test_second_build_into_the_same_out_refuses(workload, tmp_path):
    out = tmp_path / "out"
    # The first build times more iterations so that it is still running when the second reaches the lock.
    first = _start(build_args(workload, out, "--batch-sizes", "1", "--iterations", "150", "--warmup", "1"))
    _wait_for_stage(first, out, "fold")
    second = subprocess.run(
        [str(console_script()), *build_args(workload, out, "--batch-sizes", "1", "--iterations", "5", "--force")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    first_out, first_err = first.communicate(timeout=600)
    assert first.returncode == 0, first_err
    assert second.returncode == 2, second.stderr
    # Normally the lock; "already exists" only if the first build finished before the second got there.
    still_running = "another resnet-deploy build is writing" in second.stderr
    assert still_running or "already exists" in second.stderr, second.stderr
    _check_complete(out)
    assert json.loads((out / "report.json").read_text())["engines"][0]["latency"][0]["batch_size"] == 1
    assert _leftovers(out) == []


# ------------------------------------------------------------------- the same, in-process and exact


def test_lock_refuses_a_second_writer(tmp_path):
    out = tmp_path / "out"
    with staged_output_dir(out, force=False) as stage:
        (stage / "a.txt").write_text("first")
        with pytest.raises(UserError, match="another resnet-deploy build is writing"):
            with staged_output_dir(out, force=True):
                pass
    assert (out / "a.txt").read_text() == "first"


@pytest.fixture
def python_sigint():
    """Python's own SIGINT handler (KeyboardInterrupt), whatever this process inherited: a shell starts
    background jobs with SIGINT ignored, and Python then leaves it ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("python_sigint")
def test_a_signal_during_the_final_swap_waits_for_it(tmp_path, monkeypatch):
    """SIGINT between 'move the old build aside' and 'move the new one in' is held until both are done."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("previous build")
    real_replace = os.replace
    calls = []

    def replace_then_interrupt(src, dst):
        calls.append(Path(dst).name)
        real_replace(src, dst)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # arrives right after the previous build was moved aside

    with pytest.raises(KeyboardInterrupt):
        with staged_output_dir(out, force=True) as stage:
            (stage / "new.txt").write_text("new build")
            monkeypatch.setattr(os, "replace", replace_then_interrupt)
    monkeypatch.undo()
    assert calls == ["previous", "out"]
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"] and _leftovers(out) == []


@pytest.mark.usefixtures("python_sigint")
def test_signals_deferred_delivers_after_the_block():
    received = []
    with pytest.raises(KeyboardInterrupt):
        with _signals_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            received.append("block finished")
    assert received == ["block finished"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.fixture
def interrupt_handler():
    """The console script's handler of SIGINT and SIGTERM, for one test."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield InterruptHandler.install()
    for s, handler in previous.items():
        signal.signal(s, handler)


def _swallowed_interrupt(sig: signal.Signals = signal.SIGINT) -> None:
    """The user's Ctrl-C arrives while a library runs, and the library loses its KeyboardInterrupt."""
    try:
        signal.raise_signal(sig)
    except KeyboardInterrupt:
        pass


def test_an_interrupt_a_library_swallowed_still_stops_the_staged_output(tmp_path, interrupt_handler):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with staged_output_dir(out, force=False) as stage:
            (stage / "a.txt").write_text("written before the interrupt")
            _swallowed_interrupt(signal.SIGTERM)
            (stage / "b.txt").write_text("written after it: the build went on")
    assert interrupt_handler.received == [signal.SIGTERM]
    assert not out.exists() and _leftovers(out) == []


def test_an_interrupt_a_library_swallowed_still_exits_130(interrupt_handler):
    import click
    from click.testing import CliRunner

    from resnet_deploy.cli.options import common

    finished = []

    @click.command()
    @common
    def command(progress) -> int:
        _swallowed_interrupt()
        finished.append(True)
        return 0

    result = CliRunner().invoke(command, ["--quiet"])
    assert finished == [True]  # the command ran to its end: the exception was lost, the signal was not
    assert result.exit_code == 130 and "interrupted: no output was left half written" in result.output


def test_without_an_interrupt_nothing_is_raised(tmp_path, interrupt_handler):
    out = tmp_path / "out"
    with staged_output_dir(out, force=False) as stage:
        (stage / "a.txt").write_text("complete")
    assert (out / "a.txt").read_text() == "complete" and interrupt_handler.received == []


# Children that interrupt themselves at every lock point in turn. Without the fixes they hang (a worker waits for a lock
# the main thread left held); faulthandler then prints every thread's stack and exits 1.
_AT_EACH_LOCK_POINT = r"""
import faulthandler, signal, sys, threading, time

signal.signal(signal.SIGINT, signal.default_int_handler)
ENTER = threading.Condition.__enter__.__code__


def interrupt_at(k):  # a profile hook: Ctrl-C right after the k-th Condition.__enter__ of this thread took its lock
    entered = 0

    def hook(frame, event, arg):
        nonlocal entered
        if event == "c_return" and frame.f_code is ENTER:
            entered += 1
            if entered == k:
                sys.setprofile(None)
                signal.raise_signal(signal.SIGINT)

    return hook


def check_threads_ended(k):
    if threading.active_count() != 1:
        sys.exit(f"after an interrupt at lock {k}: {threading.active_count() - 1} pool threads are still alive")
"""

_INTERRUPT_INSIDE_THE_POOL = (
    _AT_EACH_LOCK_POINT
    + r"""
from resnet_deploy.data import ImageFolderDataset, Preprocess

dataset = ImageFolderDataset.scan(sys.argv[1], Preprocess(input_size=(3, 32, 32)))
list(dataset.iter_batches(4))  # imports done
faulthandler.dump_traceback_later(90, exit=True)
outcomes = []
for k in range(1, 200):
    sys.setprofile(interrupt_at(k))
    try:
        batches = sum(1 for _ in dataset.iter_batches(4))
    except KeyboardInterrupt:
        outcomes.append("interrupted")
    else:
        outcomes.append(f"{batches} batches")
        break
    finally:
        sys.setprofile(None)
    check_threads_ended(k)
print(" ".join(outcomes))
"""
)

# The same for a Future the main thread waits for (the tensorrt-target model made in a thread meanwhile); with
# "plain" as its argument, Future.result() instead of files.future_result (it hangs).
_INTERRUPT_INSIDE_A_FUTURE_WAIT = (
    _AT_EACH_LOCK_POINT
    + r"""
from concurrent.futures import ThreadPoolExecutor
from resnet_deploy.files import future_result

wait = (lambda future: future.result()) if sys.argv[1:] == ["plain"] else future_result
faulthandler.dump_traceback_later(90, exit=True)
outcomes = []
for k in range(1, 200):
    try:
        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(time.sleep, 0.25)
            sys.setprofile(interrupt_at(k))
            try:
                wait(future)
            finally:
                sys.setprofile(None)
    except KeyboardInterrupt:
        outcomes.append("interrupted")
    else:
        outcomes.append("done")
        break
    check_threads_ended(k)
print(" ".join(outcomes))
"""
)


def _interrupting_child(script: str, *args: str, hung: str) -> list[str]:
    """Run one of the scripts above in a child; its outcomes, one per lock point interrupted."""
    from .conftest import REPO

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    try:
        proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, timeout=180)
    except subprocess.TimeoutExpired:
        pytest.fail(hung)
    assert proc.returncode == 0, proc.stderr  # a hang shows every thread's stack here
    return proc.stdout.split()


def test_an_interrupt_inside_the_loaders_thread_pool_leaves_no_lock_held(tmp_path):
    """Ctrl-C (or SIGTERM, the same handler) raised at each point where the main thread has just taken one of the
    thread pool's locks (threading.Condition.__enter__, Python code, can be interrupted after its acquire): the
    loader still stops and its threads end. Raised there, the lock stayed held and the build never exited."""
    from PIL import Image

    for i in range(8):
        Image.new("RGB", (32, 32), (i * 30, 0, 0)).save(tmp_path / f"{i}.png")
    outcomes = _interrupting_child(
        _INTERRUPT_INSIDE_THE_POOL, str(tmp_path), hung="iter_batches hung after an interrupt inside the pool's locking"
    )
    assert outcomes[-2:] == ["2", "batches"] and outcomes.count("interrupted") >= 10, outcomes


def test_an_interrupt_while_waiting_for_a_future_leaves_no_lock_held():
    """Ctrl-C at each point where the main thread, waiting for a Future (files.future_result), has just taken one
    of its locks: the wait stops and the pool's thread ends. Future.result() itself hangs there."""
    outcomes = _interrupting_child(
        _INTERRUPT_INSIDE_A_FUTURE_WAIT, hung="future_result hung after an interrupt inside the Future's locking"
    )
    assert outcomes[-1] == "done" and outcomes.count("interrupted") >= 5, outcomes  # 7 lock points here
