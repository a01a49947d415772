"""Whether TensorRT engines can be built here: a small local check, to be replaced by fusionrt.engine's."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def engine_unavailable_reason() -> str | None:
    """``None`` when TensorRT and an NVIDIA GPU are present, else why the engine stage is skipped."""
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed (pip package tensorrt)"
    if not Path("/dev/nvidia0").exists() and not Path("/dev/nvidiactl").exists():
        return "no NVIDIA GPU on this machine"
    return "fusionrt has no engine builder yet (the TensorRT issue adds fusionrt build)"
