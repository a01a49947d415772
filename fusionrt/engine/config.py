"""Builder options and the Polygraphy ``CreateConfig`` made from them.

Precision is not a builder flag: it lives in the ONNX graph (FP16 casts, INT8 Q/DQ) and the network is
parsed strongly typed, which is the only mode TensorRT 11 has and is valid on 10.x too. So no
``fp16=`` / ``int8=`` here (Polygraphy refuses them on 11.x anyway).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from fusionrt.bundle.spec import GraphSpec
from fusionrt.errors import InputError
from fusionrt.runtime.backends.tensorrt.device import DeviceInfo
from fusionrt.runtime.backends.tensorrt.profiles import ShapeProfile, polygraphy_profiles

# Default workspace cap: on a GPU that shares memory with the CPU (Jetson) 1 GiB, enough for this model; on a
# discrete GPU none (TensorRT's own default: the device's memory), so tactics that need more are not ruled out.
INTEGRATED_WORKSPACE_MB = 1024
DEFAULT_OPT_LEVEL = 3  # TensorRT's default


@dataclass(frozen=True)
class BuildOptions:
    """What ``fusionrt build`` passes to the builder; recorded in the manifest beside each engine."""

    workspace_mb: int | None = None  # None: see workspace_for
    opt_level: int = DEFAULT_OPT_LEVEL
    timing_cache: str | None = None  # default: <bundle>/engines/timing.<gpu>.<trt>.cache
    version_compatible: bool = False
    exclude_lean_runtime: bool = False  # with version_compatible: the plan the lean runtime (same version) runs

    def __post_init__(self) -> None:
        if self.workspace_mb is not None and (not isinstance(self.workspace_mb, int) or self.workspace_mb < 1):
            raise InputError("--workspace-mb", "a positive number of MiB", repr(self.workspace_mb))
        if not isinstance(self.opt_level, int) or not 0 <= self.opt_level <= 5:
            raise InputError("--opt-level", "an integer in [0, 5]", repr(self.opt_level))
        if self.exclude_lean_runtime and not self.version_compatible:
            raise InputError("--exclude-lean-runtime", "only together with --version-compatible",
                             "--exclude-lean-runtime alone")

    def workspace_for(self, device: DeviceInfo | None) -> int | None:
        """The workspace cap in MiB: the one asked for, 1 GiB on an integrated GPU, else None (no cap)."""
        if self.workspace_mb is not None:
            return self.workspace_mb
        return INTEGRATED_WORKSPACE_MB if device is not None and device.integrated else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def create_config(trt: ModuleType, graph: GraphSpec, profiles: Sequence[ShapeProfile], options: BuildOptions,
                  timing_cache: str | Path | None, device: DeviceInfo | None = None) -> Any:
    """A Polygraphy ``CreateConfig`` (a lazy loader: nothing runs until the build calls it).

    ``trt`` supplies ``MemoryPoolType`` for the workspace key (the real module, or the test fake).
    ``timing_cache`` is loaded when the file exists; the build saves it back to the same path.
    ``device`` decides the default workspace cap (:meth:`BuildOptions.workspace_for`).
    """
    from polygraphy.backend.trt import CreateConfig

    cache = Path(timing_cache) if timing_cache is not None else None
    workspace = options.workspace_for(device)
    return CreateConfig(
        profiles=polygraphy_profiles(graph, profiles),
        memory_pool_limits={trt.MemoryPoolType.WORKSPACE: workspace << 20} if workspace is not None else None,
        builder_optimization_level=options.opt_level,
        load_timing_cache=str(cache) if cache is not None and cache.is_file() else None,
        version_compatible=options.version_compatible or None,
        exclude_lean_runtime=options.exclude_lean_runtime or None,
    )
