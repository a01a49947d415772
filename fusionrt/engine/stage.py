"""The pipeline's engine stage: TensorRT engines through ``fusionrt.engine`` where TensorRT and a GPU exist."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fusionrt.engine.build import build_engines, require_build_environment
from fusionrt.progress import Progress
from fusionrt.runtime.backends.tensorrt.errors import MissingRequirementError


def engine_unavailable_reason() -> str | None:
    """``None`` when the full TensorRT and a CUDA device are present, else why the engine stage is skipped."""
    try:
        require_build_environment()
    except MissingRequirementError as exc:
        return str(exc.received)
    return None


def build_all_engines(bundle_dir: Path, precisions: Sequence[str], progress: Progress) -> dict[str, Any]:
    """Build every graph's engine at each of ``precisions`` the TensorRT path takes (never int8-cpu)."""
    built = {}
    for precision in precisions:
        if precision == "int8-cpu":  # ONNX Runtime's CPU recipe (U8S8): not a TensorRT graph
            continue
        engines = build_engines(bundle_dir, precision, progress=progress)
        built[precision] = [{"file": e.entry.file, "bytes": e.plan_bytes, "seconds": round(e.seconds, 1)}
                            for e in engines]
    return {"engines": built}
