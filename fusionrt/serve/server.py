"""Start and stop a real ``tritonserver`` on a model repository, with the recipe of shared/docs/triton.md.

The server comes from the ``nvidia-pytriton`` wheel (``pip install 'fusionrt[serve]'`` in a numpy<2
environment): it bundles ``tritonserver`` with only the Python backend. On GPUs use the NGC Triton
container instead, which also has the onnxruntime and TensorRT backends.

What the recipe fixes: the Python-backend stub must match the serving interpreter's version and load
its libpython (``<sys.base_prefix>/lib`` first on ``LD_LIBRARY_PATH``), the interpreter's ``bin`` goes
first on ``PATH`` (the stub finds numpy and fusionrt through it), and every server gets its own shared
memory prefix so that :meth:`TritonServer.stop` can check that none of its ``/dev/shm`` segments is left.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from fusionrt.errors import DescribedError

INSTALL_HINT = ("the nvidia-pytriton wheel in the serving environment (pip install 'fusionrt[serve]' in a venv of "
                "its own: it needs numpy<2); on GPUs serve the repository with the NGC Triton container "
                "(nvcr.io/nvidia/tritonserver) instead")
SHM_DIR = Path("/dev/shm")
# Printed by `fusionrt serve` once the server is ready; tests and scripts parse this line.
READY_FORMAT = "ready: http 127.0.0.1:{http} grpc 127.0.0.1:{grpc} pid {pid} shm-prefix {prefix}"
# A line of the stack trace tritonserver prints when it aborts ("12# 0x... in ..."), and the stubs' note
# that their server went away: both hide the cause, which comes just before them.
STACK_FRAME = re.compile(r"^\s*\d+# |.*Non-graceful termination detected")
# Each server's scratch directory (backend copy) and shm prefix carry the launcher's pid, so that a later
# launcher can tell which ones a dead launcher (kill -9) left behind.
WORKDIR_PREFIX = "fusionrt-triton-"
# Startup lines the server prints on every CPU machine (shared/docs/triton.md): never an exit cause.
HARMLESS = ("Failed to initialize NVML", "DCGM unable to start", "CudaDriverHelper has not been initialized",
            "pinned memory pool will not be available", "Unable to allocate pinned system memory")


class ServeError(DescribedError):
    """The Triton server cannot be found, started or stopped cleanly."""


@dataclass(frozen=True)
class TritonInstall:
    """Where the serving interpreter's pytriton wheel keeps the server and what the stub needs."""

    python: Path
    version: str  # "3.11"
    base_prefix: Path
    pytriton: Path

    @property
    def server(self) -> Path:
        return self.pytriton / "tritonserver" / "bin" / "tritonserver"

    @property
    def stub(self) -> Path:
        return self.pytriton / "tritonserver" / "python_backend_stubs" / self.version / "triton_python_backend_stub"

    @property
    def python_backend(self) -> Path:
        return self.pytriton / "tritonserver" / "backends" / "python"

    @property
    def libs(self) -> Path:
        return self.pytriton.parent / "nvidia_pytriton.libs"

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{self.python.parent}{os.pathsep}{env.get('PATH', '')}"
        libraries = [str(self.base_prefix / "lib"), str(self.libs), env.get("LD_LIBRARY_PATH", "")]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libraries if p)
        return env


_PROBE = ("import importlib.util, json, sys; s = importlib.util.find_spec('pytriton'); "
          "print(json.dumps({'version': '%d.%d' % sys.version_info[:2], 'base_prefix': sys.base_prefix, "
          "'pytriton': s.submodule_search_locations[0] if s else None}))")


def find_triton(python: str | Path | None = None) -> TritonInstall:
    """The pytriton install of ``python`` (default: this interpreter); :class:`ServeError` if there is none."""
    # Not resolved: a venv's python is a symlink and its bin directory is what goes on PATH.
    python = Path(python or sys.executable).absolute()
    try:
        probe = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True, timeout=60, check=True)
        info = json.loads(probe.stdout)
    except (OSError, subprocess.SubprocessError, json.JSONDecodeError) as exc:
        raise ServeError("python", "a Python interpreter to serve with", f"{python} ({exc})") from exc
    if info["pytriton"] is None:
        raise ServeError("tritonserver", INSTALL_HINT, f"no pytriton package for {python}")
    install = TritonInstall(python, info["version"], Path(info["base_prefix"]), Path(info["pytriton"]))
    for path in (install.server, install.stub, install.python_backend / "libtriton_python.so"):
        if not path.is_file():
            raise ServeError("tritonserver", f"{path.name} in the nvidia-pytriton wheel (Python {install.version})",
                             f"nothing at {path}")
    return install


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the server gets SIGTERM if the launcher dies without stopping it (kill -9), never orphaned."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    """A TCP port free on loopback now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def shm_segments(prefix: str) -> list[Path]:
    """This server's shared-memory segments still in /dev/shm."""
    return sorted(SHM_DIR.glob(f"{prefix}*")) if SHM_DIR.is_dir() else []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _owner(name: str, prefix: str) -> int | None:
    """The launcher pid in ``<prefix><pid>[-_]...``, or None for a name of another form."""
    digits = name[len(prefix):].split("-")[0].split("_")[0]
    return int(digits) if name.startswith(prefix) and digits.isdigit() else None


def clean_stale(temp_dir: str | Path | None = None) -> list[Path]:
    """Remove the scratch directories and /dev/shm segments of launchers that are dead (killed with -9,
    which no exit handler sees); those of live launchers are left alone. Returns what was removed."""
    removed = []
    for path in Path(temp_dir or tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*"):
        pid = _owner(path.name, WORKDIR_PREFIX)
        if pid is not None and path.is_dir() and not _alive(pid):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    for segment in shm_segments("fusionrt"):
        pid = _owner(segment.name, "fusionrt")
        if pid is not None and not _alive(pid):
            segment.unlink(missing_ok=True)
            removed.append(segment)
    return removed


def has_models(repository: Path) -> bool:
    """Whether ``repository`` holds at least one model directory with a config.pbtxt."""
    return any((entry / "config.pbtxt").is_file() for entry in repository.iterdir() if entry.is_dir())


class TritonServer:
    """``with TritonServer(repo) as server: ...`` starts ``tritonserver`` on loopback and stops it on exit.

    ``http_port`` / ``grpc_port``: default free ports. ``python``: the serving interpreter (its venv has
    nvidia-pytriton and fusionrt). ``log``: where the server's log lines go (default: kept in memory;
    the last lines are in error messages).
    """

    def __init__(self, repository: str | Path, *, http_port: int | None = None, grpc_port: int | None = None,
                 python: str | Path | None = None, log=None, verbose: int = 0) -> None:
        self.repository = Path(repository).resolve()
        if not self.repository.is_dir():
            raise ServeError("repository", "a Triton model repository directory", f"nothing at {self.repository}")
        if not has_models(self.repository):
            # tritonserver would report ready while serving nothing.
            raise ServeError("repository", "model directories with config.pbtxt (fusionrt triton writes them)",
                             f"none in {self.repository}")
        self.install = find_triton(python)
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.shm_prefix = f"fusionrt{os.getpid()}_{secrets.token_hex(3)}_"
        self.verbose = verbose
        self.log_sink = log
        self.log_tail: collections.deque[str] = collections.deque(maxlen=200)
        self.process: subprocess.Popen | None = None
        self.workdir: Path | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def _backend_dir(self) -> Path:
        """A backend directory with the Python backend and the stub matching the interpreter."""
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-"))
        python_dir = self.workdir / "backends" / "python"
        python_dir.mkdir(parents=True)
        for source in (self.install.python_backend / "libtriton_python.so",
                       self.install.python_backend / "triton_python_backend_utils.py", self.install.stub):
            shutil.copy2(source, python_dir / source.name)
        return self.workdir / "backends"

    def command(self, backend_dir: Path) -> list[str]:
        return [
            str(self.install.server), f"--model-repository={self.repository}", f"--backend-directory={backend_dir}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            "--http-address=127.0.0.1", f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
            "--allow-metrics=false", f"--log-verbose={self.verbose}", "--exit-timeout-secs=20",
        ]

    def _pump(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.log_tail.append(line.rstrip("\n"))
            if self.log_sink is not None:
                self.log_sink.write(line)
                self.log_sink.flush()

    def is_ready(self) -> bool:
        url = f"http://127.0.0.1:{self.http_port}/v2/health/ready"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def start(self, timeout: float = 180.0) -> TritonServer:
        """Start the server and wait until every model is loaded; :class:`ServeError` with its log if it fails.

        What dead launchers left behind (scratch directories, shm segments) is removed first."""
        clean_stale()
        backend_dir = self._backend_dir()
        # Own session: a terminal's Ctrl-C reaches us, not the server; stop() ends the whole group.
        self.process = subprocess.Popen(self.command(backend_dir), env=self.install.environment(),
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        text=True, errors="replace", start_new_session=True,
                                        preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        threading.Thread(target=self._pump, name="tritonserver-log", daemon=True).start()
        deadline = time.monotonic() + timeout
        while not self.is_ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise ServeError("tritonserver", f"a server ready within {timeout:.0f} s",
                                 f"{self.failure()}")
            time.sleep(0.1)
        return self

    def failure(self) -> str:
        """Why the server did not come up: its error lines (model load failures name the file)."""
        time.sleep(0.2)  # let the log pump drain the last lines
        errors = [line for line in self.log_tail if line.startswith("E") or "failed to load" in line
                  or "error" in line.lower()]
        shown = errors or list(self.log_tail)[-15:]
        status = "exited" if self.process and self.process.poll() is not None else "timed out"
        return f"server {status}; its log says:\n  " + "\n  ".join(shown[-15:])

    def exit_cause(self) -> str:
        """How the server ended, for a human: the signal or status, then its last log lines that are not
        the harmless startup messages (e.g. ``terminate called after throwing an instance of 'std::bad_alloc'``)."""
        code = self.process.poll() if self.process else None
        if code is None:
            how = "is still running"
        elif code < 0:
            how = f"was killed by {signal.Signals(-code).name} (signal {-code})"
        else:
            how = f"exited with status {code}"
        time.sleep(0.2)  # let the log pump drain the last lines
        lines = [line for line in self.log_tail if line.strip() and not any(h in line for h in HARMLESS)
                 and not STACK_FRAME.match(line)]
        return f"tritonserver (pid {self.pid}) {how}; its last log lines:\n  " + "\n  ".join(lines[-8:])

    def restart(self, timeout: float = 180.0) -> TritonServer:
        """Stop what is left of the server (process group, shm, scratch) and start it again on the same ports."""
        self.stop()
        self.log_tail.clear()
        return self.start(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, wait, SIGKILL the process group if needed, then remove this server's /dev/shm segments."""
        process = self.process
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)  # stubs left behind by a server that did not finish
            process.wait()
        for segment in shm_segments(self.shm_prefix):
            segment.unlink(missing_ok=True)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def ready_line(self) -> str:
        return READY_FORMAT.format(http=self.http_port, grpc=self.grpc_port, pid=self.pid, prefix=self.shm_prefix)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
