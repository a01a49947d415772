"""benchmarks/gpu_check.sh on a machine without CUDA: exits 0, says so, writes a JSON that says so."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_without_cuda_exits_cleanly_saying_so(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the script would run for minutes")
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out)], capture_output=True,
                          text=True, timeout=120, check=False, env=env)
    assert done.returncode == 0, done.stderr
    assert "no CUDA device on this machine" in done.stderr
    result = json.loads(out.read_text())
    assert result["skipped"] == "no CUDA device" and result["steps"] == []
    assert result["probe"]["tensorrt"] is None and "missing TensorRT" in result["probe"]["tensorrt_missing"]
