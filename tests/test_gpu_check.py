"""scripts/gpu_check.py on a machine without a GPU: runs end to end, says what it skipped, always writes its JSON;
a step that fails or hangs is recorded as failed and the next one runs (failures injected into the harness)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.py"
GPU_STEPS = ("cuda_layer", "torch_eager", "torch_cuda_graph", "torch_compile", "tensorrt_build", "tensorrt_run")


def _no_gpu_here():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the check would run for minutes")


def _run(out, *args, timeout=120):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *args], capture_output=True, text=True,
                          timeout=timeout, check=False, env=env, cwd=out.parent)


def test_without_a_gpu_every_gpu_step_is_skipped_by_name_and_the_json_is_written(tmp_path):
    _no_gpu_here()
    done = _run(tmp_path / "out")
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert report["finished"] is True and report["failed"] == []
    assert report["steps"]["probe"]["status"] == "ok"
    assert report["steps"]["probe"]["result"]["cuda_device"] is None
    assert report["skipped"] == list(GPU_STEPS)
    assert "no CUDA device for cuda-python" in report["steps"]["cuda_layer"]["reason"]
    assert report["steps"]["torch_eager"]["reason"] == "torch sees no CUDA device"
    assert "no TensorRT with a GPU here" in report["steps"]["tensorrt_run"]["reason"]
    for step in GPU_STEPS:
        assert f"{step}: skipped" in done.stderr


def test_a_hanging_and_a_failing_step_are_recorded_and_the_run_goes_on(tmp_path):
    """Without the probe (its time depends on the machine's load), so the 4 s cap meets only the injected steps."""
    done = _run(tmp_path / "out", "--steps", "cuda_layer,torch_eager,tensorrt_build",
                "--inject", "cuda_layer=timeout", "--inject", "torch_eager=error", "--step-limit-s", "4")
    # the injected hang sleeps for hours: finishing within _run's timeout means the step was killed
    assert done.returncode == 1
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    steps = report["steps"]
    assert steps["cuda_layer"] == {**steps["cuda_layer"], "status": "failed", "error": "timed out after 4 s (killed)"}
    assert steps["torch_eager"]["status"] == "failed"
    assert "RuntimeError: injected failure of step torch_eager" in steps["torch_eager"]["error"]
    assert steps["tensorrt_build"]["status"] == "skipped" and "no probe result" in steps["tensorrt_build"]["reason"]
    assert report["failed"] == ["cuda_layer", "torch_eager"] and report["finished"] is True


def test_results_so_far_survive_the_run_being_killed(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.Popen([sys.executable, str(SCRIPT), "--out", str(out), "--steps", "probe,cuda_layer",
                            "--inject", "cuda_layer=timeout"], env=env, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        report = {}
        while time.monotonic() < deadline and "probe" not in report.get("steps", {}):
            time.sleep(0.2)
            if (out / "gpu_check.json").is_file():
                report = json.loads((out / "gpu_check.json").read_text())  # never half written
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["steps"]["probe"]["status"] == "ok" and report["finished"] is False


def test_bad_step_names_are_refused(tmp_path):
    done = _run(tmp_path / "out", "--steps", "probe,warp_drive")
    assert done.returncode == 2 and "warp_drive" in done.stderr
