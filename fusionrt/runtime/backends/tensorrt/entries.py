"""The manifest's ``engines`` section: one entry per plan file, and the choice of the plan to load.

TensorRT has no preflight API: a plan built by another TensorRT version or for another GPU fails inside
deserialization (or worse). So every plan is recorded with what it is tied to, and the entry is
compared with this machine BEFORE the plan is deserialized; a mismatch names both sides and the
``fusionrt build`` command that makes a matching engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from fusionrt.bundle.manifest import Bundle
from fusionrt.errors import BackendError, BundleError
from fusionrt.runtime.backends.tensorrt.device import DeviceInfo
from fusionrt.runtime.backends.tensorrt.versions import same_build

SECTION = "engines"
ENGINE_DIR = "engines"


def engine_filename(graph: str, precision: str, device: DeviceInfo, trt_version: str) -> str:
    """``engines/fusion.fp16.nvidia-h100-80gb-hbm3.trt11.4.0.106.plan`` (relative to the bundle)."""
    return f"{ENGINE_DIR}/{graph}.{precision}.{device.slug}.trt{trt_version}.plan"


def timing_cache_filename(device: DeviceInfo, trt_version: str) -> str:
    """Timing caches are per GPU and TensorRT version; one file serves every graph and precision."""
    return f"{ENGINE_DIR}/timing.{device.slug}.trt{trt_version}.cache"


@dataclass(frozen=True)
class EngineEntry:
    """What one plan was built from, with, and for."""

    file: str
    graph: str
    precision: str
    tensorrt: str
    gpu: str
    compute_capability: str
    version_compatible: bool
    profiles: list[dict[str, list[int]]]
    onnx_file: str
    onnx_sha256: str
    plan_sha256: str
    build_seconds: float = 0.0
    builder_options: dict[str, Any] = field(default_factory=dict)
    exclude_lean_runtime: bool = False  # built for the lean runtime: carries no runtime of its own

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["file"]
        return out

    @classmethod
    def from_dict(cls, file: str, data: Mapping[str, Any]) -> EngineEntry:
        try:
            return cls(file=file, **{k: data[k] for k in cls.__dataclass_fields__ if k != "file" and k in data})
        except TypeError as exc:
            raise BundleError(f"manifest.json {SECTION}.{file}", "an engine entry (graph, precision, tensorrt, gpu, "
                              "compute_capability, profiles, onnx_sha256, plan_sha256 ...)", str(exc)) from exc

    def describe(self) -> str:
        compat = (", version-compatible" if self.version_compatible else "") + (
            ", lean runtime excluded" if self.exclude_lean_runtime else "")
        return f"TensorRT {self.tensorrt} on {self.gpu} (compute {self.compute_capability}{compat}) [{self.file}]"


def engine_entries(bundle: Bundle) -> list[EngineEntry]:
    section = bundle.manifest.get(SECTION) or {}
    if not isinstance(section, dict):
        raise BundleError(f"manifest.json {SECTION}", "an object of plan file -> entry", type(section).__name__)
    return [EngineEntry.from_dict(file, data) for file, data in section.items()]


def build_command(bundle: Bundle, graph: str, precision: str) -> str:
    return f"fusionrt build {bundle.path} --precision {precision} --graph {graph}"


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".")[:3] if p.isdigit())


def mismatches(entry: EngineEntry, bundle: Bundle, trt_version: str, device: DeviceInfo, lean: bool) -> list[str]:
    """Why ``entry`` cannot run here (empty: it can), each reason naming the engine's side and this machine's."""
    reasons = []
    if lean:  # NvInferRuntime.h (10.3), loadRuntime: plans built VERSION_COMPATIBLE and EXCLUDE_LEAN_RUNTIME,
        # by the same TensorRT version as the lean runtime
        if not (entry.version_compatible and entry.exclude_lean_runtime):
            reasons.append("runtime: the lean runtime (tensorrt_lean) loads only engines built --version-compatible "
                           "--exclude-lean-runtime")
        elif not same_build(entry.tensorrt, trt_version):
            reasons.append(f"TensorRT: engine {entry.tensorrt}, this lean runtime {trt_version} (it runs only plans "
                           "built by its own version)")
    elif entry.version_compatible and not entry.exclude_lean_runtime:
        if _version_tuple(trt_version) < _version_tuple(entry.tensorrt):
            reasons.append(f"TensorRT: engine {entry.tensorrt} (version-compatible: runs on it or newer), "
                           f"this machine {trt_version}")
    elif not same_build(entry.tensorrt, trt_version):
        reasons.append(f"TensorRT: engine {entry.tensorrt}, this machine {trt_version}")
    if entry.compute_capability != device.compute_capability:
        reasons.append(f"compute capability: engine {entry.compute_capability}, this GPU {device.compute_capability}")
    if entry.gpu != device.name:
        reasons.append(f"GPU: engine {entry.gpu}, this machine {device.name}")
    files = bundle.manifest["files"]
    onnx_now = files.get(entry.onnx_file, {}).get("sha256")
    if onnx_now != entry.onnx_sha256:
        reasons.append(f"source graph {entry.onnx_file}: engine built from sha256 {entry.onnx_sha256[:12]}, "
                       f"bundle has {str(onnx_now)[:12]} (the graph changed after the build)")
    plan_now = files.get(entry.file, {}).get("sha256")
    if plan_now != entry.plan_sha256:
        reasons.append(f"plan {entry.file}: entry says sha256 {entry.plan_sha256[:12]}, "
                       f"files lists {str(plan_now)[:12]}")
    return reasons


def select_engine(bundle: Bundle, graph: str, precision: str, trt_version: str, device: DeviceInfo,
                  lean: bool = False) -> EngineEntry:
    """The first recorded engine of ``graph`` at ``precision`` that can run here, else :class:`BackendError`."""
    candidates = [e for e in engine_entries(bundle) if e.graph == graph and e.precision == precision]
    here = f"TensorRT {trt_version}{' (lean)' if lean else ''} on {device.name} (compute {device.compute_capability})"
    command = build_command(bundle, graph, precision)
    if not candidates:
        raise BackendError(f"TensorRT engine of {graph} at {precision}",
                           f"an engine built for {here}; build one on this machine: {command}",
                           f"a bundle without one (engines: {[e.file for e in engine_entries(bundle)]})")
    refused = []
    for entry in candidates:
        reasons = mismatches(entry, bundle, trt_version, device, lean)
        if not reasons:
            return entry
        refused.append(f"{entry.file}: " + "; ".join(reasons))
    raise BackendError(f"TensorRT engine of {graph} at {precision}",
                       f"an engine built for {here}; build one on this machine: {command}",
                       " | ".join(refused))
