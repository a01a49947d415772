"""``build_engines``: parse each graph strongly typed through Polygraphy, build, write the plan, record it.

Order matters for "nothing written on failure": requirements (full TensorRT and a CUDA device) are
checked before anything touches the bundle; plans are written inside one bundle transaction and published
with one manifest rename, with every new plan's entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from fusionrt.bundle.transaction import BundleTransaction
from fusionrt.engine.config import BuildOptions, create_config
from fusionrt.errors import InputError
from fusionrt.progress import SILENT, Progress
from fusionrt.runtime.backends.tensorrt.device import DeviceInfo, cuda_device
from fusionrt.runtime.backends.tensorrt.entries import SECTION, EngineEntry, engine_filename, timing_cache_filename
from fusionrt.runtime.backends.tensorrt.errors import GET_GPU, INSTALL_TENSORRT, BuildError, MissingRequirementError
from fusionrt.runtime.backends.tensorrt.profiles import profiles_for, unknown_symbols
from fusionrt.runtime.backends.tensorrt.versions import import_tensorrt, version_of

# (onnx path, CreateConfig, timing cache path) -> serialized plan
PlanBuilder = Callable[[Path, Any, Path], bytes]


@dataclass(frozen=True)
class BuildEnvironment:
    """What a build needs from the machine; tests pass a fake one."""

    trt: ModuleType
    device: DeviceInfo
    build_plan: PlanBuilder

    @property
    def tensorrt_version(self) -> str:
        return version_of(self.trt)


@dataclass(frozen=True)
class BuiltEngine:
    entry: EngineEntry
    plan_bytes: int
    seconds: float


def require_build_environment(device_index: int = 0) -> BuildEnvironment:
    """The full TensorRT (builder and ONNX parser) and a CUDA device, or one error naming what is missing."""
    missing, trt, device = [], None, None
    try:
        trt = import_tensorrt(allow_lean=False)
        if not hasattr(trt, "Builder") or not hasattr(trt, "OnnxParser"):
            missing.append(f"TensorRT's builder and ONNX parser (found a runtime-only install; {INSTALL_TENSORRT})")
    except MissingRequirementError:
        missing.append(f"TensorRT ({INSTALL_TENSORRT})")
    try:
        device = cuda_device(device_index)
    except MissingRequirementError as exc:
        missing.append(f"a CUDA device ({GET_GPU}; cuda-python says: {exc.received})")
    if missing:
        raise MissingRequirementError("fusionrt build", "TensorRT and a CUDA GPU on this machine",
                                      "missing " + " and ".join(missing) + "; nothing was written")
    assert trt is not None and device is not None
    return BuildEnvironment(trt, device, polygraphy_build_plan)


class _Tee(io.TextIOBase):
    """Write to the real stdout and keep a copy, so parser errors Polygraphy logs end up in our error."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.copy = stream, io.StringIO()

    def write(self, text: str) -> int:
        self.copy.write(text)
        return self.stream.write(text)


def polygraphy_build_plan(onnx_path: Path, config: Any, timing_cache: Path) -> bytes:
    """Polygraphy: ``NetworkFromOnnxPath(strongly_typed=True)`` -> ``EngineBytesFromNetwork`` (saves the cache)."""
    from polygraphy.backend.trt import EngineBytesFromNetwork, NetworkFromOnnxPath
    from polygraphy.exception import PolygraphyException

    tee = _Tee(sys.stdout)
    try:
        with contextlib.redirect_stdout(tee):
            network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=True)
            return bytes(EngineBytesFromNetwork(network, config=config, save_timing_cache=str(timing_cache))())
    except PolygraphyException as exc:
        # Polygraphy logs each parser error (node name, operator, description) before raising.
        logged = [line.strip() for line in tee.copy.getvalue().splitlines()
                  if line.lstrip().startswith("[E]") or "ERROR" in line or " node " in line]
        text = " ".join(str(exc).split())  # one line: the CLI prints errors on one line
        raise BuildError(onnx_path.name, "a graph TensorRT parses and builds",
                         text + (f" | {' | '.join(logged[-10:])}" if logged else "")) from exc


# Graphs a bundle lists for other backends only, skipped unless ``graphs`` names them: the caption TensorRT
# stepper runs caption_step (the concat cache form) with its own device buffers, so the fixed-capacity
# caption_step_buffer graph, the ONNX Runtime / OpenVINO form, would be a plan nothing loads.
NOT_BUILT_BY_DEFAULT = frozenset({"caption_step_buffer"})

def build_engines(bundle_dir: str | Path, precision: str, *, graphs: Sequence[str] | None = None,
                  profile_specs: Sequence[Mapping[str, tuple[int, int, int]]] = (),
                  options: BuildOptions | None = None, progress: Progress = SILENT,
                  environment: BuildEnvironment | None = None) -> list[BuiltEngine]:
    """Build an engine of every graph (or of ``graphs``) that has ``precision``; record them in the manifest.

    One :class:`BundleTransaction`: the bundle is opened (and hash-checked) once under its lock, every plan is
    written under a name no live manifest lists, and all of them are published with one manifest rename, so a
    reader never sees a plan whose bytes do not match its entry (a rebuild under the same name included)."""
    env = environment or require_build_environment()
    options = options or BuildOptions()
    with BundleTransaction(bundle_dir) as tx:
        bundle = tx.bundle
        assert bundle is not None
        names = list(graphs) if graphs else [g for g, spec in bundle.graphs.items()
                                             if precision in spec.precisions and g not in NOT_BUILT_BY_DEFAULT]
        if not names:
            raise InputError("--precision", f"a precision some graph of the bundle has "
                             f"({ {g: sorted(s.precisions) for g, s in bundle.graphs.items()} })", repr(precision))
        specs = [bundle.graph(n) for n in names]
        unknown = unknown_symbols(specs, profile_specs)
        if unknown:
            raise InputError("--profiles", f"dims of the graphs built ({sorted({s for g in specs for s in g.dims})})",
                             f"unknown dims {unknown}")
        version = env.tensorrt_version
        cache = Path(options.timing_cache) if options.timing_cache else \
            bundle.path / timing_cache_filename(env.device, version)
        cache.parent.mkdir(parents=True, exist_ok=True)
        built = []
        for graph in progress.iterate(specs, f"build {precision}", unit="engine"):
            onnx_path = bundle.graph_path(graph.name, precision)
            profiles = profiles_for(graph, profile_specs)
            config = create_config(env.trt, graph, profiles, options, cache, env.device)
            start = time.perf_counter()
            plan = env.build_plan(onnx_path, config, cache)
            seconds = time.perf_counter() - start
            if not plan:
                raise BuildError(onnx_path.name, "a serialized engine", "nothing (the builder returned no plan)")
            file = engine_filename(graph.name, precision, env.device, version)
            tx.new_file(file).write_bytes(plan)
            onnx_file = onnx_path.relative_to(bundle.path).as_posix()
            entry = EngineEntry(
                file=file, graph=graph.name, precision=precision, tensorrt=version, gpu=env.device.name,
                compute_capability=env.device.compute_capability, version_compatible=options.version_compatible,
                exclude_lean_runtime=options.exclude_lean_runtime,
                profiles=[p.to_dict() for p in profiles], onnx_file=onnx_file,
                onnx_sha256=bundle.manifest["files"][onnx_file]["sha256"],
                plan_sha256=hashlib.sha256(plan).hexdigest(), build_seconds=round(seconds, 3),
                builder_options={**options.to_dict(), "timing_cache": str(cache),
                                 "workspace_mb": options.workspace_for(env.device)},
            )
            built.append(BuiltEngine(entry, len(plan), seconds))
            progress.note(f"{file}: {len(plan) / 2**20:.1f} MiB in {seconds:.1f} s")
        section = dict(bundle.manifest.get(SECTION) or {})
        section.update({b.entry.file: b.entry.to_dict() for b in built})
        tx.commit(sections={SECTION: section})
    return built
