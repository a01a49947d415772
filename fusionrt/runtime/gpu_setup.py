"""The GPU pieces ``fusionrt doctor`` checks, and for each one missing the one command that installs it.

Pieces: a CUDA device (no command: hardware and driver), cuda-python of the driver's CUDA major (a CUDA 12 driver,
e.g. JetPack 6, refuses cuda-python 13), onnxruntime-gpu (never beside onnxruntime: same module), TensorRT (not
on PyPI in usable form: NVIDIA's index, or JetPack's apt packages on Jetson) and Polygraphy (for ``fusionrt build``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fusionrt.runtime.backends.tensorrt.errors import GET_GPU

EXTRA_OF_MAJOR = {12: "gpu", 13: "gpu-cu13"}  # pyproject.toml's GPU extras
CUDA_PYTHON_OF_MAJOR = {12: "cuda-python>=12.6.1,<13", 13: "cuda-python>=13,<14"}
DEFAULT_MAJOR = 12
NVIDIA_INDEX = "https://pypi.nvidia.com"
JETSON_RELEASE_FILE = Path("/etc/nv_tegra_release")


def tensorrt_command(jetson: bool, major: int) -> str:
    """How to get the full TensorRT (builder, parser and runtime) on this kind of machine."""
    if jetson:
        return "sudo apt install nvidia-jetpack"
    return f"pip install --extra-index-url {NVIDIA_INDEX} tensorrt-cu{major}"


def driver_major(cuda_version: int | None = None, nvidia_smi_driver: str | None = None) -> int | None:
    """The CUDA major the driver supports: from ``cudaDriverGetVersion`` (13000 -> 13), else from the driver
    version nvidia-smi prints (580 and later: CUDA 13; 525 and later: CUDA 12); None when neither says."""
    if cuda_version:
        return cuda_version // 1000
    try:
        branch = int(str(nvidia_smi_driver).split(".")[0])
    except ValueError:
        return None
    return 13 if branch >= 580 else 12 if branch >= 525 else None


def gpu_fixes(packages: Mapping[str, Mapping[str, Any]], device_found: bool, major: int | None,
              jetson: bool) -> list[dict[str, str | None]]:
    """``[{"missing": what, "command": the one command that fixes it (None: not a package)}]``, in install order."""
    cuda = major or DEFAULT_MAJOR
    fixes: list[dict[str, str | None]] = []
    if not device_found:
        fixes.append({"missing": "a CUDA device", "command": None, "note": GET_GPU})
    bindings = packages.get("cuda.bindings", {})
    installed_major = int(str(bindings.get("version") or "0").split(".")[0] or 0)
    if not bindings.get("importable") or (major is not None and installed_major > major):
        what = "cuda-python" if not bindings.get("importable") else (
            f"cuda-python of CUDA {major} (installed: {bindings.get('version')}, which this driver refuses)")
        fixes.append({"missing": what, "command": f'pip install "{CUDA_PYTHON_OF_MAJOR.get(cuda, "cuda-python")}"'})
    ort = packages.get("onnxruntime", {})
    if not packages.get("onnxruntime_gpu", {}).get("installed"):
        if jetson:
            command = "pip install onnxruntime-gpu from the Jetson Zoo (https://elinux.org/Jetson_Zoo), not PyPI"
        else:
            command = ("pip uninstall -y onnxruntime && " if ort.get("installed") else "") + \
                f'pip install "fusionrt[{EXTRA_OF_MAJOR.get(cuda, "gpu")}]"'
        fixes.append({"missing": "onnxruntime-gpu (ONNX Runtime's CUDA and TensorRT providers)", "command": command})
    if not (packages.get("tensorrt", {}).get("importable") or packages.get("tensorrt_lean", {}).get("importable")):
        fixes.append({"missing": "TensorRT", "command": tensorrt_command(jetson, cuda)})
    if not packages.get("polygraphy", {}).get("importable"):
        fixes.append({"missing": "Polygraphy (for fusionrt build)", "command": "pip install polygraphy"})
    return fixes
