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
from fusionrt.runtime.backends.tensorrt.profiles import ShapeProfile, polygraphy_profiles

DEFAULT_WORKSPACE_MB = 1024  # enough for this model; Jetson shares memory with the CPU, so keep it capped
DEFAULT_OPT_LEVEL = 3  # TensorRT's default


@dataclass(frozen=True)
class BuildOptions:
    """What ``fusionrt build`` passes to the builder; recorded in the manifest beside each engine."""

    workspace_mb: int = DEFAULT_WORKSPACE_MB
    opt_level: int = DEFAULT_OPT_LEVEL
    timing_cache: str | None = None  # default: <bundle>/engines/timing.<gpu>.<trt>.cache
    version_compatible: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.workspace_mb, int) or self.workspace_mb < 1:
            raise InputError("--workspace-mb", "a positive number of MiB", repr(self.workspace_mb))
        if not isinstance(self.opt_level, int) or not 0 <= self.opt_level <= 5:
            raise InputError("--opt-level", "an integer in [0, 5]", repr(self.opt_level))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def create_config(trt: ModuleType, graph: GraphSpec, profiles: Sequence[ShapeProfile], options: BuildOptions,
                  timing_cache: str | Path | None) -> Any:
    """A Polygraphy ``CreateConfig`` (a lazy loader: nothing runs until the build calls it).

    ``trt`` supplies ``MemoryPoolType`` for the workspace key (the real module, or the test fake).
    ``timing_cache`` is loaded when the file exists; the build saves it back to the same path.
    """
    from polygraphy.backend.trt import CreateConfig

    cache = Path(timing_cache) if timing_cache is not None else None
    return CreateConfig(
        profiles=polygraphy_profiles(graph, profiles),
        memory_pool_limits={trt.MemoryPoolType.WORKSPACE: options.workspace_mb << 20},
        builder_optimization_level=options.opt_level,
        load_timing_cache=str(cache) if cache is not None and cache.is_file() else None,
        version_compatible=options.version_compatible or None,
    )
