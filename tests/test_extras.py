"""Every extra of pyproject.toml resolves from the package index (`pip install --dry-run`, nothing installed), and
the GPU extras pull onnxruntime-gpu without onnxruntime and cuda-python of one CUDA major. Needs the index (CI has
it): about 5 s per extra, resolved three at a time."""

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent
EXTRAS = sorted(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])


def _resolve(extra, tmp_path):
    """(exit code, {name: version} pip would install, pip's last lines)."""
    report = tmp_path / f"{extra}.json"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-build-isolation",
         "--quiet", "--report", str(report), "-c", str(ROOT / "constraints.txt"), f"{ROOT}[{extra}]"],
        capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path)
    installs = {}
    if done.returncode == 0:
        installs = {i["metadata"]["name"].lower(): i["metadata"]["version"]
                    for i in json.loads(report.read_text())["install"]}
    lines = [line for line in done.stderr.splitlines() if not line.startswith("WARNING: Location")]
    return done.returncode, installs, "\n".join(lines[-15:])


@pytest.fixture(scope="module")
def resolved(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("extras")
    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(zip(EXTRAS, pool.map(lambda e: _resolve(e, tmp), EXTRAS), strict=True))


def test_the_gpu_extras_exist_and_tensorrt_is_not_one():
    assert {"gpu", "gpu-cu13"} <= set(EXTRAS) and "tensorrt" not in EXTRAS


@pytest.mark.parametrize("extra", EXTRAS)
def test_every_extra_resolves(resolved, extra):
    code, installs, tail = resolved[extra]
    assert code == 0, f"pip install --dry-run '.[{extra}]' failed:\n{tail}"
    assert "fusionrt" in installs


@pytest.mark.parametrize(("extra", "major"), [("gpu", "12"), ("gpu-cu13", "13")])
def test_gpu_extras_bring_onnxruntime_gpu_alone_and_one_cuda_major(resolved, extra, major):
    code, installs, tail = resolved[extra]
    assert code == 0, tail
    assert "onnxruntime-gpu" in installs and "onnxruntime" not in installs  # one module, two packages: never both
    assert installs["cuda-python"].split(".")[0] == major
    assert installs["cuda-bindings"].split(".")[0] == major
    assert not any(name.startswith("tensorrt") for name in installs)
