"""The CUDA device, asked through cuda-python before TensorRT is touched.

Without a driver, creating a ``trt.Runtime`` logs "CUDA initialization failure with error: 35" and any
method call on it then crashes the Python process (measured, ../shared/docs/tensorrt.md). So every
TensorRT path calls :func:`cuda_device` first and refuses with a typed error instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from fusionrt.errors import BackendError
from fusionrt.runtime.backends.tensorrt.errors import GET_GPU, INSTALL_CUDA_PYTHON, MissingRequirementError


@dataclass(frozen=True)
class DeviceInfo:
    """One CUDA device: what an engine is tied to (name and compute capability)."""

    index: int
    name: str
    compute_capability: str  # "8.7"
    memory_bytes: int
    integrated: bool = False  # shares memory with the CPU (Jetson)

    @property
    def slug(self) -> str:
        """The name as a file-name part: ``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100-80gb-hbm3``."""
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-") or "gpu"

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "compute_capability": self.compute_capability,
                "memory_bytes": self.memory_bytes, "integrated": self.integrated}


def import_cudart() -> ModuleType:
    """``cuda.bindings.runtime`` (cuda-bindings >= 12.6; 13 dropped ``from cuda import cudart``)."""
    try:
        from cuda.bindings import runtime as cudart
    except Exception as exc:
        raise MissingRequirementError("cuda-python", f"the cuda-python package ({INSTALL_CUDA_PYTHON})",
                                      f"{type(exc).__name__}: {exc}") from exc
    return cudart


def error_text(cudart: ModuleType, err: Any) -> str:
    """``cudaErrorInsufficientDriver (35): CUDA driver version is insufficient ...``."""
    try:
        _, text = cudart.cudaGetErrorString(err)
        text = text.decode() if isinstance(text, bytes) else str(text)
    except Exception:  # the message is a nicety; the code is what matters
        text = ""
    name = getattr(err, "name", str(err))
    return f"{name} ({int(err)})" + (f": {text}" if text else "")


def check(cudart: ModuleType, result: Any, what: str) -> Any:
    """Unpack a cuda-python ``(err, value...)`` tuple; a non-zero ``err`` raises :class:`BackendError`."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BackendError(what, "cudaSuccess", error_text(cudart, err))
    return values[0] if len(values) == 1 else tuple(values) if values else None


def cuda_device(index: int = 0, cudart: ModuleType | None = None) -> DeviceInfo:
    """The device ``index``; no driver, no device or a bad index raises :class:`MissingRequirementError`."""
    cudart = cudart or import_cudart()
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or not count:
        reason = error_text(cudart, err) if int(err) != 0 else "0 devices"
        raise MissingRequirementError("CUDA device", GET_GPU, f"none usable ({reason})")
    if not 0 <= index < count:
        raise MissingRequirementError("CUDA device", f"an index in [0, {count - 1}]", repr(index))
    props = check(cudart, cudart.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return DeviceInfo(index, name.rstrip("\x00").strip(), f"{props.major}.{props.minor}", int(props.totalGlobalMem),
                      bool(getattr(props, "integrated", 0)))
