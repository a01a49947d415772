"""TensorRT backend: runs a plan recorded in the bundle's manifest, through the named-tensor API.

Thin on purpose: only names present in both TensorRT lean listings (10.15 and 11.4) and the full 10.3
listing are used (tests/test_tensorrt_api_names.py checks this from the AST). Order of activation:
cuda-python device check (a ``trt.Runtime`` without a driver crashes Python on its first method call),
then the manifest comparison (TensorRT version, GPU, compute capability, hashes), and only then
deserialization, with the TensorRT logger captured so a failure says why.

Each concurrent caller gets its own execution context, stream and buffers from a pool (a context is
not thread-safe), and a profile no other running call holds (TensorRT: contexts in concurrent use must
use different optimization profiles). Optional CUDA graphs are captured per (profile, shapes, buffer addresses).
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import ModuleType
from typing import Any

import numpy as np

from fusionrt.bundle.manifest import Bundle
from fusionrt.bundle.spec import GraphSpec
from fusionrt.errors import BackendError, InputError
from fusionrt.runtime.backends.tensorrt.cuda import DeviceBuffer, Event, GraphLauncher, PinnedBuffer, Stream
from fusionrt.runtime.backends.tensorrt.device import DeviceInfo, check, cuda_device, import_cudart
from fusionrt.runtime.backends.tensorrt.entries import EngineEntry, build_command, select_engine
from fusionrt.runtime.backends.tensorrt.profiles import Shape, covering_profiles, describe_ranges
from fusionrt.runtime.backends.tensorrt.versions import import_tensorrt, is_lean, version_of
from fusionrt.runtime.runner import Runner

DEFAULT_MAX_CONTEXTS = 4
LOG_LINES_KEPT = 64  # TensorRT may warn on every call; only the latest lines go into error messages
# Stream handles that mean a default stream (legacy, cudaStreamLegacy, cudaStreamPerThread): TensorRT warns on
# each enqueue there and synchronizes around it, so such work goes to the slot's own stream, ordered by events.
DEFAULT_STREAMS = frozenset({0, 1, 2})


def capturing_logger(trt: ModuleType) -> Any:
    """A ``trt.ILogger`` that keeps warnings and errors, so a failed deserialization can say why."""

    class CapturingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: deque[str] = deque(maxlen=LOG_LINES_KEPT)
            self._keep = (trt.ILogger.INTERNAL_ERROR, trt.ILogger.ERROR, trt.ILogger.WARNING)

        def log(self, severity: Any, msg: str) -> None:
            if severity in self._keep:
                self.messages.append(str(msg))

    return CapturingLogger()


def recent(messages: Iterable[str], count: int = 5) -> str:
    """The last ``count`` logger lines, for an error message."""
    return " | ".join(list(messages)[-count:])


def numpy_dtypes(trt: ModuleType) -> dict[Any, np.dtype]:
    return {trt.DataType.FLOAT: np.dtype("float32"), trt.DataType.HALF: np.dtype("float16"),
            trt.DataType.INT8: np.dtype("int8"), trt.DataType.INT32: np.dtype("int32"),
            trt.DataType.INT64: np.dtype("int64"), trt.DataType.BOOL: np.dtype("bool"),
            trt.DataType.UINT8: np.dtype("uint8")}



def set_input_shapes(context: Any, tensors: EngineTensors, shapes: Mapping[str, tuple[int, ...]], profile: int) -> None:
    """Set every input's shape on ``context`` (whose profile is ``profile``) and check that every output
    shape then resolves; a refusal names the input and the profile."""
    for name in tensors.inputs:
        if not context.set_input_shape(name, shapes[name]):
            raise BackendError(f"input {name}", f"a shape profile {profile} accepts", str(shapes[name]))
    unresolved = context.infer_shapes()
    if unresolved:
        raise BackendError("input shapes", "every output shape resolvable", f"unresolved {list(unresolved)}")


class EngineTensors:
    """Names, dtypes and per-profile (min, max) input shapes, read once from the engine."""

    def __init__(self, trt: ModuleType, engine: Any) -> None:
        dtypes = numpy_dtypes(trt)
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        found = {n: engine.get_tensor_dtype(n) for n in names}
        unknown = {n: str(d) for n, d in found.items() if d not in dtypes}
        if unknown:
            raise BackendError("engine inputs/outputs", "float32, float16, int8, int32, int64, bool or uint8 tensors",
                               str(unknown))
        self.dtypes = {n: dtypes[d] for n, d in found.items()}
        self.ranges: list[dict[str, tuple[Shape, Shape]]] = []
        for index in range(engine.num_optimization_profiles):
            shapes = {n: [tuple(int(d) for d in s) for s in engine.get_tensor_profile_shape(n, index)]
                      for n in self.inputs}
            self.ranges.append({n: (s[0], s[2]) for n, s in shapes.items()})


class ContextSlot:
    """One execution context with its own stream, buffers (device and pinned host) and CUDA graphs.

    ``done`` marks the end of the slot's last enqueue on whichever stream it went: ``infer_torch`` returns
    before the GPU has run it, so the slot's next user (and ``release``) waits on that event first: TensorRT
    leaves changing a context's addresses or shapes, or freeing it, while its work is in flight undefined.
    """

    def __init__(self, cudart: ModuleType, engine: Any, tensors: EngineTensors, cuda_graphs: bool) -> None:
        self.cudart = cudart
        self.context = engine.create_execution_context()
        if self.context is None:
            raise BackendError("execution context", "one more context (device memory for activations)",
                               "None from create_execution_context (out of GPU memory?)")
        self.tensors = tensors
        self.stream = Stream(cudart)
        self.done = Event(cudart)
        self.caller_ready = Event(cudart)  # orders the slot's stream after a caller's default stream
        names = (*tensors.inputs, *tensors.outputs)
        self.buffers = {n: DeviceBuffer(cudart) for n in names}
        self.host = {n: PinnedBuffer(cudart) for n in names}
        self.launcher = GraphLauncher(cudart) if cuda_graphs else None
        self.profile: int | None = None

    def prepare(self, profile: int, shapes: Mapping[str, tuple[int, ...]], stream_ptr: int) -> dict[str, Shape]:
        """Wait for the slot's previous work, select ``profile``, set the input shapes; return each output's shape."""
        self.done.make_wait(stream_ptr)
        context = self.context
        if profile != self.profile:
            if not context.set_optimization_profile_async(profile, stream_ptr):
                raise BackendError("optimization profile", f"profile {profile} selectable", "refused")
            self.profile = profile
        set_input_shapes(context, self.tensors, shapes, profile)
        return {name: tuple(int(d) for d in context.get_tensor_shape(name)) for name in self.tensors.outputs}

    def bind(self, name: str, ptr: int) -> None:
        """``set_tensor_address``, refused addresses (null, misaligned) raised instead of ignored."""
        if not self.context.set_tensor_address(name, ptr):
            raise BackendError(f"tensor {name}", "a device address TensorRT accepts (set_tensor_address: "
                               "non-null, aligned to the tensor's type)", f"{ptr:#x} refused")

    def run(self, profile: int, feed: dict[str, np.ndarray], messages: Iterable[str]) -> dict[str, np.ndarray]:
        """Host arrays in and out, through pinned staging buffers, this slot's device buffers and stream."""
        context, stream = self.context, self.stream
        dtypes = self.tensors.dtypes
        staged = {}
        for name in self.tensors.inputs:
            array = np.asarray(feed[name])
            staged[name] = self.host[name].view(array.shape, dtypes[name])
            staged[name][...] = array
        shapes = self.prepare(profile, {n: a.shape for n, a in staged.items()}, stream.ptr)
        outputs = {n: self.host[n].view(shape, dtypes[n]) for n, shape in shapes.items()}
        moved = False
        for name, array in (*staged.items(), *outputs.items()):
            moved |= self.buffers[name].reserve(array.nbytes)
            self.bind(name, self.buffers[name].ptr)
        if moved and self.launcher is not None:
            self.launcher.release()
        for name, array in staged.items():
            self.buffers[name].upload(array, stream)
        enqueue = lambda: bool(context.execute_async_v3(stream.ptr))  # noqa: E731 - one call, named for reuse
        if self.launcher is None:
            ok = enqueue()
        else:
            key = (profile, tuple(a.shape for a in staged.values()), tuple(b.ptr for b in self.buffers.values()))
            ok = self.launcher.run(key, enqueue, stream)
        if not ok:
            raise BackendError("execute_async_v3", "a successful enqueue", f"failure ({recent(messages)})")
        for name, array in outputs.items():
            self.buffers[name].download(array, stream)
        self.done.record(stream.handle)
        stream.synchronize()
        return {name: array.copy() for name, array in outputs.items()}  # the pinned buffers are reused

    def run_device(self, profile: int, feed: Mapping[str, Any], stream_ptr: int, empty: Any,
                   messages: Iterable[str]) -> dict[str, Any]:
        """Device tensors in (``data_ptr()``), device tensors out (made by ``empty(name, shape)``), enqueued
        after the caller's stream's work and before its later work, without a host copy or a host wait."""
        on_default = stream_ptr in DEFAULT_STREAMS
        if on_default:  # run on the slot's stream, after the caller's queued work (which made the inputs)
            self.caller_ready.record(stream_ptr)
            self.caller_ready.make_wait(self.stream.handle)
        run_ptr = self.stream.ptr if on_default else stream_ptr
        shapes = self.prepare(profile, {n: tuple(feed[n].shape) for n in self.tensors.inputs}, run_ptr)
        outputs = {n: empty(n, shape) for n, shape in shapes.items()}
        for name, tensor in (*feed.items(), *outputs.items()):
            self.bind(name, int(tensor.data_ptr()))
        if not self.context.execute_async_v3(run_ptr):
            raise BackendError("execute_async_v3", "a successful enqueue", f"failure ({recent(messages)})")
        self.done.record(run_ptr)
        if on_default:  # the caller's later work (reading the outputs) waits for ours
            self.done.make_wait(stream_ptr)
        return outputs

    def release(self) -> None:
        """Wait for the slot's last work, then free everything it holds."""
        self.done.synchronize()
        if self.launcher is not None:
            self.launcher.release()
        for buffer in (*self.buffers.values(), *self.host.values()):
            buffer.free()
        self.done.destroy()
        self.caller_ready.destroy()
        self.stream.destroy()
        self.context = None


class ContextPool:
    """Up to ``limit`` slots. TensorRT's rule: contexts in concurrent use must use different optimization
    profiles. So a caller gets a slot together with a profile that covers its feed and that no running call
    holds (a slot already on that profile if one is idle), and waits otherwise. Build several identical
    profiles (``--profiles B=1:1:64 --profiles B=1:1:64``) for several concurrent callers of one shape range."""

    def __init__(self, make: Any, limit: int) -> None:
        self._make, self._limit = make, limit
        self._idle: list[ContextSlot] = []
        self._busy_profiles: set[int] = set()
        self.slots: list[ContextSlot] = []
        self._ready = threading.Condition()

    def _take(self, profiles: Sequence[int]) -> tuple[ContextSlot, int] | None:
        free = [p for p in profiles if p not in self._busy_profiles]
        if not free or (not self._idle and len(self.slots) >= self._limit):
            return None
        for profile in free:  # an idle slot already on a free profile avoids a profile switch
            for slot in self._idle:
                if slot.profile == profile:
                    self._idle.remove(slot)
                    return slot, profile
        if self._idle:
            return self._idle.pop(), free[0]
        slot = self._make()
        self.slots.append(slot)
        return slot, free[0]

    @contextlib.contextmanager
    def slot(self, profiles: Sequence[int]) -> Iterator[tuple[ContextSlot, int]]:
        """A slot and one of ``profiles`` (those covering the feed), held until the block ends."""
        with self._ready:
            taken = self._take(profiles)
            while taken is None:
                self._ready.wait()
                taken = self._take(profiles)
            self._busy_profiles.add(taken[1])
        try:
            yield taken
        finally:
            with self._ready:
                self._idle.append(taken[0])
                self._busy_profiles.discard(taken[1])
                self._ready.notify_all()

    def release(self) -> None:
        with self._ready:
            for slot in self.slots:
                slot.release()
            self.slots, self._idle = [], []


def load_engine(bundle: Bundle, graph: GraphSpec, precision: str, device: DeviceInfo,
                cudart: ModuleType) -> tuple[Any, Any, EngineTensors, Any, EngineEntry]:
    """(runtime, engine, tensors, logger, entry) of the recorded plan of ``graph`` that can run on ``device``
    (checked by :func:`cuda_device` before: no TensorRT object exists without a device). The manifest entry is
    compared with this machine and the plan's hash checked before deserialization; a failure says why."""
    trt = import_tensorrt(allow_lean=True)
    entry = select_engine(bundle, graph.name, precision, version_of(trt), device, is_lean(trt))
    plan = bundle.file(entry.file).read_bytes()
    digest = hashlib.sha256(plan).hexdigest()
    if digest != entry.plan_sha256:
        raise BackendError(entry.file, f"sha256 {entry.plan_sha256} as recorded at build",
                           f"sha256 {digest} (altered after the bundle was opened); rebuild: "
                           f"{build_command(bundle, graph.name, precision)}")
    check(cudart, cudart.cudaSetDevice(device.index), "cudaSetDevice")
    logger = capturing_logger(trt)
    runtime = trt.Runtime(logger)
    if entry.version_compatible and not entry.exclude_lean_runtime:
        runtime.engine_host_code_allowed = True  # such a plan carries its own (lean runtime) host code
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise BackendError(entry.file, f"a plan TensorRT {version_of(trt)} deserializes on {device.name}",
                           f"a failure: {recent(logger.messages) or 'no message from TensorRT'}; "
                           f"rebuild: {build_command(bundle, graph.name, precision)}")
    tensors = EngineTensors(trt, engine)
    declared = ([t.name for t in graph.inputs], [t.name for t in graph.outputs])
    if (sorted(tensors.inputs), sorted(tensors.outputs)) != tuple(sorted(x) for x in declared):
        raise BackendError(entry.file, f"inputs/outputs {declared} as in manifest.json",
                           f"{tensors.inputs} / {tensors.outputs}")
    return runtime, engine, tensors, logger, entry


def _on_device(tensor: Any) -> bool:
    return getattr(getattr(tensor, "device", None), "type", None) == "cuda"


class TensorRTRunner(Runner):
    """Options: ``device`` (CUDA index, default 0), ``cuda_graphs`` (default False), ``max_contexts``
    (concurrent callers, default 4)."""

    backend = "tensorrt"

    def __init__(self, bundle: Bundle, graph: str = "fusion", precision: str = "fp32", *, device: int = 0,
                 cuda_graphs: bool = False, max_contexts: int = DEFAULT_MAX_CONTEXTS) -> None:
        super().__init__(bundle, graph, precision)
        if max_contexts < 1:
            raise BackendError("max_contexts", "at least 1", repr(max_contexts))
        self._device_index, self._cuda_graphs, self._max_contexts = device, cuda_graphs, max_contexts
        self.device: DeviceInfo | None = None
        self.entry: EngineEntry | None = None
        self.pool: ContextPool | None = None
        self._engine: Any = None

    def activate_impl(self) -> None:
        cudart = import_cudart()
        self.device = device = cuda_device(self._device_index, cudart)  # before any TensorRT object exists
        loaded = load_engine(self.bundle, self.graph, self.precision, device, cudart)
        runtime, engine, tensors, logger, entry = loaded
        self._runtime, self._engine, self._tensors, self._logger, self.entry = runtime, engine, tensors, logger, entry
        self._cudart = cudart
        self.pool = ContextPool(lambda: ContextSlot(cudart, engine, tensors, self._cuda_graphs), self._max_contexts)

    def _use_device(self) -> None:
        """``cudaSetDevice`` on the calling thread: the current device is per thread (a new thread starts on
        device 0), and slots, streams, buffers and enqueues must all be on the engine's device."""
        assert self.device is not None
        check(self._cudart, self._cudart.cudaSetDevice(self.device.index), "cudaSetDevice")

    def _profiles_for(self, shapes: Mapping[str, Shape]) -> list[int]:
        """The profiles covering ``shapes``; outside all of them, an error listing their ranges."""
        profiles = covering_profiles(self._tensors.ranges, shapes)
        if not profiles:
            raise BackendError("input shapes", f"shapes inside one profile of {self.entry.file}: "
                               f"{describe_ranges(self._tensors.ranges)}",
                               ", ".join(f"{n} {list(s)}" for n, s in shapes.items()))
        return profiles

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self.pool is not None
        shapes = {name: tuple(array.shape) for name, array in feed.items()}
        self._use_device()
        with self.pool.slot(self._profiles_for(shapes)) as (slot, profile):
            outputs = slot.run(profile, feed, self._logger.messages)
        return {t.name: outputs[t.name].astype(t.np_dtype, copy=False) for t in self.graph.outputs}

    def infer_torch(self, feed: Mapping[str, Any], stream: int | None = None) -> dict[str, Any]:
        """Torch CUDA tensors in and out, no host copy: enqueued on ``stream`` (default: torch's current stream;
        a default stream is replaced by the context's own stream, ordered with events), not synchronized.
        Counted as in flight for ``close()``, which also waits for the GPU work. Checks names, device, dtype and
        the profile; values are not validated (use ``infer``)."""
        with self.in_call():
            return self._infer_torch(feed, stream)

    def _infer_torch(self, feed: Mapping[str, Any], stream: int | None) -> dict[str, Any]:
        import torch

        tensors = self._tensors
        if sorted(feed) != sorted(tensors.inputs):
            raise InputError("feed", f"torch tensors named {tensors.inputs}", str(sorted(feed)))
        for name in tensors.inputs:
            tensor, dtype = feed[name], getattr(torch, tensors.dtypes[name].name)
            if not _on_device(tensor) or tensor.dtype != dtype or not tensor.is_contiguous():
                raise InputError(name, f"a contiguous CUDA tensor of {dtype}",
                                 f"{getattr(tensor, 'dtype', type(tensor).__name__)} on "
                                 f"{getattr(tensor, 'device', '?')} (contiguous: {tensor.is_contiguous()})")
        shapes = {name: tuple(tensor.shape) for name, tensor in feed.items()}
        profiles = self._profiles_for(shapes)
        device = next(iter(feed.values())).device
        self._use_device()
        stream_ptr = int(torch.cuda.current_stream(device).cuda_stream) if stream is None else int(stream)

        def empty(name: str, shape: Shape) -> Any:
            return torch.empty(shape, dtype=getattr(torch, tensors.dtypes[name].name), device=device)

        with self.pool.slot(profiles) as (slot, profile):
            return slot.run_device(profile, feed, stream_ptr, empty, self._logger.messages)

    def deactivate_impl(self) -> None:
        if self.pool is not None:
            self._use_device()
            self.pool.release()
        self.pool = self._engine = self._runtime = None

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if self.entry is not None and self.device is not None:
            info.update(engine=self.entry.file, tensorrt=self.entry.tensorrt, device=self.device.name,
                        compute_capability=self.device.compute_capability, cuda_graphs=self._cuda_graphs)
        return info
