"""The one place that imports TensorRT and knows which version it is.

The full ``tensorrt`` package builds and runs; the runtime-only ``tensorrt_lean`` (edge images) only
runs engines built ``--version-compatible``. Names that exist in only one of 10.x / 11.x are used only
behind :func:`major` checks (tests/test_tensorrt_api_names.py enforces it).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from fusionrt.runtime.backends.tensorrt.errors import INSTALL_TENSORRT, MissingRequirementError

FULL = "tensorrt"
LEAN = "tensorrt_lean"


def import_tensorrt(allow_lean: bool = False) -> ModuleType:
    """``tensorrt``, or ``tensorrt_lean`` when allowed and the full package is missing."""
    errors = []
    for name in (FULL, LEAN) if allow_lean else (FULL,):
        try:
            return importlib.import_module(name)
        except Exception as exc:  # a broken install raises OSError / ImportError from the native libs
            errors.append(f"{name}: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}")
    raise MissingRequirementError("TensorRT", f"the TensorRT Python package ({INSTALL_TENSORRT})",
                                  "; ".join(errors))


def is_lean(trt: ModuleType) -> bool:
    return trt.__name__.split(".")[0] == LEAN


def version_of(trt: ModuleType) -> str:
    return str(trt.__version__)


def major(trt: ModuleType) -> int:
    return int(version_of(trt).split(".")[0])


def same_build(built: str, running: str) -> bool:
    """An engine runs only on the TensorRT that built it: compare major.minor.patch (build digits may differ)."""
    return built.split(".")[:3] == running.split(".")[:3]
