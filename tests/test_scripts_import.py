"""Every script under benchmarks/ and scripts/ imports: a moved or renamed module breaks a script here, in CI,
not months later when someone reruns an experiment behind RESULTS.md."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted([*(REPO / "benchmarks").glob("*.py"), *(REPO / "scripts").glob("*.py")])


def test_there_are_scripts_to_check():
    assert len(SCRIPTS) >= 5


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_script_imports_without_running(path, monkeypatch):
    monkeypatch.syspath_prepend(str(path.parent))  # scripts import their siblings (e.g. bench_int8.log)
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)  # top level only: every script runs its work under `if __name__ == "__main__"`
    assert callable(getattr(module, "main", None)), f"{path.name}: expected a main() entry point"
