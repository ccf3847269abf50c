"""Leaf helpers for files: hashing, atomic writes, reading a user's text, staged output folders, and the interrupt
handling they rely on (signals held back over a short block, interrupts recorded, waits that stay interruptible).

Every file is written atomically (a temporary file in the same folder, then a rename), so an
interrupted run never leaves a half-written file under its final name.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import UserError


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _umask() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed to `path`, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


# A JSON array of numbers as json.dumps(indent=2) writes it: one number a line. Strings cannot hold a raw
# newline, so this never matches inside a string value.
_NUMBER = r"-?(?:\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|NaN|Infinity)"
_NUMBER_LIST = re.compile(rf"\[\n\s+({_NUMBER}(?:,\n\s+{_NUMBER})*)\n\s*\]")


def dumps_json(data: Any) -> str:
    """Indented JSON with lists of numbers (shapes, latency samples) kept on one line."""
    text = json.dumps(data, indent=2, sort_keys=False, default=_json_default)
    return _NUMBER_LIST.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text) + "\n"


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, dumps_json(data))


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "value"):  # enums
        return value.value
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def read_user_text(path: Path, label: str, hint: str) -> str:
    """The UTF-8 text of a file the user named; a problem is a one-line UserError: '<label> <problem>; <hint>'."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{label} does not exist; {hint}") from None
    except IsADirectoryError:
        raise UserError(f"{label} is a folder; {hint}") from None
    except UnicodeDecodeError:
        raise UserError(f"{label} is not UTF-8 text; {hint}") from None
    except OSError as exc:
        raise UserError(f"cannot read {label} ({exc.strerror}); check the path and its permissions") from None


class InterruptHandler:
    """SIGINT/SIGTERM -> KeyboardInterrupt, remembering that one came (`install` makes it the handler of both).

    A KeyboardInterrupt can be lost in a library: one that catches every exception, or C code that clears the error
    of a Python call it made (the signal's handler runs inside that call). The signal itself is not lost: this
    handler saw it, and `raise_if_interrupted` raises it again where nothing may be published after an interrupt
    (a staged output folder's final rename, a command's exit code). The record lives on the handler, not in a
    module: the signal disposition is the process's state already.
    """

    def __init__(self) -> None:
        self.received: list[int] = []

    def __call__(self, signum: int, frame: object) -> None:
        self.received.append(signum)
        raise KeyboardInterrupt

    @classmethod
    def install(cls) -> "InterruptHandler":
        handler = cls()
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, handler)
        return handler


def raise_if_interrupted() -> None:
    """KeyboardInterrupt if an installed InterruptHandler received a signal (even one whose exception was swallowed)."""
    handler = signal.getsignal(signal.SIGINT)
    if isinstance(handler, InterruptHandler) and handler.received:
        raise KeyboardInterrupt


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back while a short block runs, then deliver them: never a half-done swap of renames, nor a
    lock of a library's threads left held by a KeyboardInterrupt raised inside it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    wanted = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda signum, frame: received.append(signum)) for s in wanted}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        for s in received[:1]:
            signal.raise_signal(s)


def future_result(future: concurrent.futures.Future, poll: float = 0.1) -> Any:
    """`future.result()` for the main thread, still interruptible: SIGINT/SIGTERM land between short waits, never
    inside the Future's locking. A KeyboardInterrupt raised there (right after `threading.Condition.__enter__`
    took its lock) leaves the lock held: the worker can then never report, and the executor's shutdown waits for
    it for ever (the hang data.py's loader had)."""
    while True:
        with signals_deferred():
            done, _ = concurrent.futures.wait([future], timeout=poll)
            if done:
                return future.result()


@contextlib.contextmanager
def staged_output_dir(out: Path, force: bool, option: str = "--out") -> Iterator[Path]:
    """Build into a hidden staging folder beside `out`; move it into place only when all went well.

    A lock beside `out` makes a second build into the same folder refuse instead of mixing files.
    An interrupted or failed build leaves `out` as it was (absent, or the previous complete build).
    """
    import fcntl
    import shutil

    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise UserError(f"{option} {out} is a file; give a folder path")
    if out.exists() and not force:
        raise UserError(f"{option} {out} already exists; pass --force to replace it, or choose another folder")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        lock_file = open(parent / f".{out.name}.lock", "a+")  # noqa: SIM115 - held for the whole build
    except OSError as exc:
        raise UserError(f"cannot write beside {option} {out} ({exc.strerror}); choose a writable folder") from None
    with lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"another resnet-deploy {'build' if option == '--out' else 'run'} is writing {out}; wait for it to finish or "
                f"choose another {option}"
            ) from None
        # Left by a killed build (we hold the lock): a staging folder, or the previous build set aside
        # by a build killed (SIGKILL) between its two renames, which is put back.
        for stale in parent.glob(f".{out.name}.old-*"):
            if (stale / "previous").is_dir() and not out.exists():
                os.replace(stale / "previous", out)
            shutil.rmtree(stale, ignore_errors=True)
        for stale in parent.glob(f".{out.name}.partial-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if out.exists() and not force:  # again under the lock: another build may have finished meanwhile
            raise UserError(f"{option} {out} already exists; pass --force to replace it, or choose another folder")
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=parent))
        os.chmod(staging, 0o777 & ~_umask())
        try:
            yield staging
            raise_if_interrupted()  # an interrupted build never publishes, whoever swallowed its KeyboardInterrupt
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=parent))
            try:
                with signals_deferred():  # out is always the previous build or the new one, never neither
                    if out.exists():
                        os.replace(out, old / "previous")
                    os.replace(staging, out)
            finally:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
