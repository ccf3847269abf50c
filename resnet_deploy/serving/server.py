"""A real `tritonserver` process as a context manager: started on free 127.0.0.1 ports, always stopped.

Where the server comes from (`find_tritonserver`), first found wins:

1. `--tritonserver PATH` (or the RESNET_DEPLOY_TRITONSERVER variable);
2. `tritonserver` on PATH (NVIDIA's Triton container: every backend, GPUs);
3. the server inside the nvidia-pytriton wheel: installed into `<venv>/tritonserver` by `make install`
   (`pip install --no-deps --target`, because the wheel pins numpy<2), or an installed `pytriton` package.
   It has the Python backend only. Its `python_backend_stubs/3.X/triton_python_backend_stub` must sit next to
   `backends/python/libtriton_python.so` (with `triton_python_backend_utils.py`, or the backend takes the
   folder for a Python-based backend and looks for a `model.py` there), so each server gets a backend folder
   of its own, in its work folder, with the stub of this Python's version; its libraries come from the
   wheel's `nvidia_pytriton.libs` (LD_LIBRARY_PATH).

`TritonServer` binds gRPC to 127.0.0.1 (HTTP and metrics off), waits for the server and every model to be
ready within a bounded time, and on leaving (also on an exception, Ctrl-C or SIGTERM, which the CLI turns into
KeyboardInterrupt) stops the whole process group: SIGTERM, then SIGKILL after a grace period. The server also
gets SIGTERM if this process dies (PR_SET_PDEATHSIG), and the Python backend's shared-memory regions carry a
prefix of this server's own, removed afterwards. A server that exits or is not ready in time raises a one-line
UserError with the last lines of its log.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import MissingDependency, UserError
from ..files import signals_deferred

ENV_VARIABLE = "RESNET_DEPLOY_TRITONSERVER"
VENV_FOLDER = "tritonserver"  # <venv>/tritonserver: `pip install --no-deps --target` of the nvidia-pytriton wheel
STUB = "triton_python_backend_stub"
STOP_GRACE_SECONDS = 15.0
POLL_SECONDS = 0.25
LOG_TAIL_LINES = 4


@dataclass(frozen=True)
class TritonInstall:
    """A tritonserver binary and what it needs to run here."""

    binary: Path
    library_path: tuple[Path, ...] = ()
    python_backend: Path | None = None  # a pytriton layout: backends/python to assemble a backend folder from
    stubs: Path | None = None  # a pytriton layout: python_backend_stubs/<X.Y>/triton_python_backend_stub
    origin: str = ""  # how it was found, for the report

    def backends(self) -> set[str] | None:
        """The backends this server has (None when unknown: a tritonserver on PATH keeps them where it was built to)."""
        if self.python_backend is not None:
            return {"python"}
        folder = self.binary.parent.parent / "backends"
        return {p.name for p in folder.iterdir() if p.is_dir()} if folder.is_dir() else None


def _pytriton_install(root: Path, origin: str) -> TritonInstall | None:
    """The server in a pytriton tree (`root` = .../pytriton/tritonserver), or None when it is not one."""
    binary, backend = root / "bin" / "tritonserver", root / "backends" / "python"
    if not (binary.is_file() and (backend / "libtriton_python.so").is_file() and (root / "python_backend_stubs").is_dir()):
        return None
    libs = root.parent.parent / "nvidia_pytriton.libs"
    return TritonInstall(binary, (libs,) if libs.is_dir() else (), backend, root / "python_backend_stubs", origin)


def find_tritonserver(explicit: Path | None = None) -> TritonInstall:
    """The tritonserver to run (see the module's docstring for the order), or a one-line MissingDependency."""
    given = explicit or (Path(os.environ[ENV_VARIABLE]) if os.environ.get(ENV_VARIABLE) else None)
    candidates: list[tuple[Path, str]] = []
    if given is not None:
        if not Path(given).is_file():
            raise UserError(f"tritonserver {given} does not exist; give the path of a tritonserver binary")
        candidates.append((Path(given), "--tritonserver" if explicit else ENV_VARIABLE))
    elif shutil.which("tritonserver"):
        candidates.append((Path(shutil.which("tritonserver")), "PATH"))
    for binary, origin in candidates:
        return _pytriton_install(binary.resolve().parent.parent, origin) or TritonInstall(binary, origin=origin)
    roots = [(Path(sys.prefix) / VENV_FOLDER / "pytriton" / "tritonserver", f"{sys.prefix}/{VENV_FOLDER}")]
    spec = importlib.util.find_spec("pytriton")
    if spec is not None and spec.submodule_search_locations:
        roots.append((Path(next(iter(spec.submodule_search_locations))) / "tritonserver", "the pytriton package"))
    for root, origin in roots:
        found = _pytriton_install(root, origin)
        if found is not None:
            return found
    raise MissingDependency(
        "no tritonserver found: run inside NVIDIA's Triton container (tritonserver on PATH), pass --tritonserver PATH, "
        f"or install the nvidia-pytriton wheel's server with `make install` (into {sys.prefix}/{VENV_FOLDER})"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise UserError(
                f"port {port} on 127.0.0.1 is in use; choose another --grpc-port or leave it out (a free one)"
            ) from None


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the process that started the server dies (Linux prctl)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last error lines of a server log (else its last lines), joined into one line."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "(no log)"
    body = [line.strip() for line in text if line.strip() and not line.lstrip().startswith(("+-", "| Option", "| Backend"))]
    errors = [line for line in body if line.startswith("E") or "error" in line.lower() or "UNAVAILABLE" in line]
    picked = (errors or body)[-lines:]
    joined = " | ".join(picked) or "(empty log)"
    return joined if len(joined) <= 600 else "..." + joined[-600:]


class TritonServer:
    """`with TritonServer(install, repository, models, workdir) as server:` a ready server at `server.url`."""

    def __init__(
        self,
        install: TritonInstall,
        repository: Path,
        models: list[str],
        workdir: Path,
        startup_timeout: float = 120.0,
        grpc_port: int | None = None,
    ) -> None:
        self.install = install
        self.repository = Path(repository).absolute()
        self.models = list(models)
        self.workdir = Path(workdir)
        self.startup_timeout = startup_timeout
        self.port = grpc_port
        self.log_path = self.workdir / "tritonserver.log"
        self.shm_prefix = f"resnet_deploy_{os.getpid()}_{secrets.token_hex(4)}_"
        self.process: subprocess.Popen | None = None
        self.version: str | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _backend_folder(self) -> Path | None:
        """A backend folder with the Python backend, its utilities and the stub of this Python's version (pytriton)."""
        if self.install.python_backend is None:
            return None
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = self.install.stubs / version / STUB
        if not stub.is_file():
            have = sorted(p.name for p in self.install.stubs.iterdir())
            raise MissingDependency(
                f"this tritonserver has no Python backend stub for Python {version} (it has {', '.join(have)})"
            )
        folder = self.workdir / "backends"
        (folder / "python").mkdir(parents=True, exist_ok=True)
        for item in self.install.python_backend.iterdir():
            target = folder / "python" / item.name
            if not target.exists():
                target.symlink_to(item)
        shutil.copy2(stub, folder / "python" / STUB)  # copied: the backend may chmod it, which a link would pass on
        return folder

    def command(self) -> list[str]:
        args = [
            str(self.install.binary),
            f"--model-repository={self.repository}",
            "--model-control-mode=explicit",
            *(f"--load-model={m}" for m in self.models),
            "--allow-http=false",
            "--allow-metrics=false",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.port}",
            "--strict-readiness=true",
            "--exit-on-error=true",
            "--exit-timeout-secs=10",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
        ]
        backends = self._backend_folder()
        if backends is not None:
            args.append(f"--backend-directory={backends}")
        return args

    def __enter__(self) -> "TritonServer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.port is None:
            self.port = free_port()
        else:
            check_port_free(self.port)
        env = dict(os.environ)
        if self.install.library_path:
            extra = ":".join(str(p) for p in self.install.library_path)
            env["LD_LIBRARY_PATH"] = f"{extra}:{env['LD_LIBRARY_PATH']}" if env.get("LD_LIBRARY_PATH") else extra
        command = self.command()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=env,
                start_new_session=True,  # its own process group: the stubs it forks are stopped with it
                preexec_fn=_die_with_parent,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _client(self):
        import tritonclient.grpc as grpcclient

        return grpcclient.InferenceServerClient(self.url)

    def _wait_ready(self) -> None:
        from tritonclient.utils import InferenceServerException

        deadline = time.monotonic() + self.startup_timeout
        client = self._client()
        try:
            while True:
                code = self.process.poll()
                if code is not None:
                    tail = log_tail(self.log_path)
                    if "address already in use" in tail.lower() or "failed to start grpc" in tail.lower():
                        raise UserError(
                            f"port {self.port} on 127.0.0.1 is in use (tritonserver: {tail}); choose another --grpc-port"
                        )
                    raise UserError(f"tritonserver exited with code {code} before it was ready: {tail}")
                with contextlib.suppress(InferenceServerException):
                    if client.is_server_ready() and all(client.is_model_ready(m) for m in self.models):
                        self.version = client.get_server_metadata(as_json=True).get("version")
                        return
                if time.monotonic() > deadline:
                    raise UserError(
                        f"tritonserver was not ready within {self.startup_timeout:g} s (raise --startup-timeout): "
                        f"{log_tail(self.log_path)}"
                    )
                time.sleep(POLL_SECONDS)
        finally:
            client.close()

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after the grace period; then its shared memory is removed."""
        process = self.process
        if process is None:
            return
        with signals_deferred():  # a second Ctrl-C must not leave the server running
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=STOP_GRACE_SECONDS)
                except subprocess.TimeoutExpired:
                    pass
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)  # the server if it did not stop, and any stub left of it
            process.wait()
            for region in Path("/dev/shm").glob(f"{self.shm_prefix}*"):
                region.unlink(missing_ok=True)
            self.process = None
