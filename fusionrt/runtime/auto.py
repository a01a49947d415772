"""``precision="auto"``: run the backend x precision that ``fusionrt tune`` measured fastest within budget.

The choice lives in the bundle's ``manifest.json`` section ``"auto"`` (written by
:func:`fusionrt.bench.tune.choose_path`)::

    {"backend": "onnxruntime", "precision": "int8-cpu", "options": {...}, "ms": {"1": 1.1, "8": 4.3},
     "machine": {...}, "candidates": [{"backend": ..., "precision": ..., "options": ..., "ms": ..., "passed": ...}]}

Reading it needs no torch. The choice was timed on one machine; :func:`machine_fingerprint` is recorded
with it and :func:`resolve_auto` says whether this machine matches, because the fastest path on a CPU
with AMX (BF16) is not the fastest on one with AVX2 only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from fusionrt.bundle.manifest import Bundle
from fusionrt.errors import BundleError
from fusionrt.runtime.cpu import CpuInfo, this_cpu

AUTO = "auto"
SECTION = "auto"
_PACKAGES = ("onnxruntime", "onnxruntime-gpu", "openvino", "tensorrt")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_fingerprint(cpu: CpuInfo | None = None) -> dict[str, Any]:
    """What the timing of a path depends on: CPU model and its BF16/INT8 features, cores, engine versions."""
    cpu = cpu or this_cpu()
    versions = {p: v for p in _PACKAGES if (v := _version(p)) is not None}
    return {"cpu": cpu.name, "cpu_flags": cpu.decisive_flags, "cores": os.cpu_count(), "versions": versions}


def same_machine(recorded: dict[str, Any], current: dict[str, Any] | None = None) -> bool:
    """Whether ``recorded`` (a fingerprint) describes this machine's CPU, core count and engines."""
    current = current or machine_fingerprint()
    return all(recorded.get(k) == current.get(k) for k in ("cpu", "cpu_flags", "cores", "versions"))


@dataclass(frozen=True)
class AutoChoice:
    """A resolved ``precision="auto"``: what to run, and whether it was measured on this machine."""

    backend: str
    precision: str
    options: dict[str, Any] = field(default_factory=dict)
    ms: dict[str, float] = field(default_factory=dict)
    same_machine: bool = True


def recorded_choice(bundle: Bundle) -> dict[str, Any]:
    """The manifest's ``auto`` section, or :class:`BundleError` saying how to make one."""
    section = bundle.manifest.get(SECTION)
    if not isinstance(section, dict) or not isinstance(section.get("candidates"), list):
        raise BundleError(f"manifest.json {SECTION}", "a choice recorded by `fusionrt tune BUNDLE` "
                          "(precision='auto' runs the path measured fastest within budget)", "none")
    return section


def resolve_auto(bundle: Bundle, backend: str, graph: str = "fusion") -> AutoChoice:
    """The recorded choice for ``backend`` (``"auto"``: the fastest overall; a backend name: the fastest
    candidate within budget on that backend). Graphs other than fusion get the same backend and precision
    without the fusion graph's options (the hint was measured on the fusion graph only)."""
    section = recorded_choice(bundle)
    if backend == AUTO:
        entry = section
    else:
        passing = [c for c in section["candidates"] if c.get("backend") == backend and c.get("passed")]
        if not passing:
            measured = sorted({c.get("backend") for c in section["candidates"] if c.get("passed")})
            raise BundleError(f"manifest.json {SECTION}", f"a candidate on backend {backend!r} within budget "
                              f"(run `fusionrt tune BUNDLE --backends {backend}`)", f"candidates on {measured}")
        entry = min(passing, key=lambda c: c["score_ms"])
    options = dict(entry.get("options", {})) if graph == "fusion" else {}
    return AutoChoice(backend=entry["backend"], precision=entry["precision"], options=options,
                      ms=dict(entry.get("ms", {})), same_machine=same_machine(section.get("machine", {})))
