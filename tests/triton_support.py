"""Shared by the Triton tests: one export of the shipped model per test session, the serving interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
