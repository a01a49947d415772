"""Shared by the Triton tests: one export of the shipped model per test session, the serving interpreter."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fusionrt.serve.server import READY_FORMAT

ROOT = Path(__file__).resolve().parents[1]


def shipped_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped checkpoint exported once per session (reused by every Triton test module)."""
    path = tmp_path_factory.getbasetemp() / "triton-shipped-bundle"
    if not (path / "manifest.json").is_file():
        from fusionrt.export import export_checkpoint

        export_checkpoint(None, path, max_batch=64)
    return path


def serving_python() -> Path:
    """The interpreter with nvidia-pytriton and fusionrt without torch (setup.sh makes .venv-serve).

    Missing: skipped on a developer machine, a failure in CI (where setup.sh must have made it).
    """
    candidates = [os.environ.get("FUSIONRT_SERVE_PYTHON"), ROOT / ".venv-serve" / "bin" / "python"]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    message = "no serving interpreter: run setup.sh (makes .venv-serve) or set FUSIONRT_SERVE_PYTHON"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def run_fusionrt(*args: str, python: str | Path = sys.executable, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([str(python), "-m", "fusionrt", *args], capture_output=True, text=True, env=env,
                          timeout=300, **kwargs)


def start_server(repo: Path, python: Path) -> tuple[subprocess.Popen, dict]:
    """``fusionrt serve REPO`` in the serving venv; returns the launcher and its parsed ready line."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([str(python), "-m", "fusionrt", "serve", str(repo)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(240)
    if not lines or not lines[0].startswith("ready:"):
        process.kill()
        raise AssertionError(f"server did not start: {lines} {process.stderr.read()[-3000:]}")
    words = lines[0].split()
    info = {"http": words[2], "grpc": words[4], "pid": int(words[6]), "prefix": words[8]}
    assert lines[0].strip() == READY_FORMAT.format(http=info["http"].split(":")[1], grpc=info["grpc"].split(":")[1],
                                                   pid=info["pid"], prefix=info["prefix"])
    return process, info


def left_behind(info: dict) -> list[str]:
    """Processes of the server's process group and /dev/shm segments of its prefix that still exist."""
    found = [f"shm {p.name}" for p in Path("/dev/shm").glob(f"{info['prefix']}*")]
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                pgid = os.getpgid(int(proc.name))
            except (ProcessLookupError, PermissionError):
                continue
            if pgid == info["pid"]:
                found.append(f"process {proc.name}: {(proc / 'cmdline').read_bytes()[:120]!r}")
    return found


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def assert_clean_client_error(caught: Exception, expected: str) -> None:
    message = str(caught)
    assert expected in message, message
    assert "Traceback" not in message and ".py" not in message and str(ROOT) not in message
    assert str(caught.status()) in ("400", "StatusCode.INVALID_ARGUMENT"), caught.status()


def serve(repo: Path) -> Iterator[dict]:
    """A module fixture's body: ``fusionrt serve REPO`` in the serving venv, yielding its ready info plus the
    repository; SIGTERM and wait when the module is done."""
    process, info = start_server(repo, serving_python())
    yield {**info, "repo": repo}
    process.send_signal(signal.SIGTERM)
    process.wait(60)
    process.stdout.close()
    process.stderr.close()
