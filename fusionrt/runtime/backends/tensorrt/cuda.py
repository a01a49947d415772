"""Streams, events, device and pinned host buffers and CUDA graphs over cuda-python (``cuda.bindings.runtime``).

Thin on purpose: every call is a cuda-python call whose error code :func:`.device.check`
turns into a typed error. Buffers grow only when a larger tensor arrives and are reused otherwise.
"""

from __future__ import annotations

import ctypes
from collections import OrderedDict
from collections.abc import Callable, Hashable
from types import ModuleType
from typing import Any

import numpy as np

from fusionrt.runtime.backends.tensorrt.device import check

DEFAULT_GRAPHS_KEPT = 8  # captured graphs kept per launcher: alternating shapes replay instead of recapturing


class _Handle:
    """A cuda-python object destroyed by one call (``destroy_call``), at most once."""

    destroy_call = ""
    handle: Any
    cudart: ModuleType

    def destroy(self) -> None:
        if self.handle is not None:
            getattr(self.cudart, self.destroy_call)(self.handle)
            self.handle = None


class Stream(_Handle):
    """A non-blocking stream (never the legacy default stream, which would serialize every context)."""

    destroy_call = "cudaStreamDestroy"

    def __init__(self, cudart: ModuleType) -> None:
        self.cudart = cudart
        self.handle = check(cudart, cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking),
                            "cudaStreamCreateWithFlags")

    @property
    def ptr(self) -> int:
        """The handle as TensorRT takes it (an integer)."""
        return int(self.handle)

    def synchronize(self) -> None:
        check(self.cudart, self.cudart.cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")


class Event(_Handle):
    """A timing-free event: marks where a stream's queued work ends, so another stream (or the host) can wait
    for exactly that work instead of a whole device or stream synchronization."""

    destroy_call = "cudaEventDestroy"

    def __init__(self, cudart: ModuleType) -> None:
        self.cudart = cudart
        self.handle = check(cudart, cudart.cudaEventCreateWithFlags(cudart.cudaEventDisableTiming),
                            "cudaEventCreateWithFlags")
        self.recorded = False

    def record(self, stream: int | Any) -> None:
        """Mark the end of the work queued so far on ``stream`` (a handle or an integer pointer)."""
        check(self.cudart, self.cudart.cudaEventRecord(self.handle, stream), "cudaEventRecord")
        self.recorded = True

    def make_wait(self, stream: int | Any) -> None:
        """Make work queued on ``stream`` from now on start after the recorded work (no host wait)."""
        if self.recorded:
            check(self.cudart, self.cudart.cudaStreamWaitEvent(stream, self.handle, 0), "cudaStreamWaitEvent")

    def synchronize(self) -> None:
        """Block the host until the recorded work is done."""
        if self.recorded:
            check(self.cudart, self.cudart.cudaEventSynchronize(self.handle), "cudaEventSynchronize")


class _Allocation:
    """Memory for one tensor from an allocate / free pair of cuda-python calls; :meth:`reserve` reallocates only
    when more bytes are needed."""

    allocate, release_call = "cudaMalloc", "cudaFree"

    def __init__(self, cudart: ModuleType) -> None:
        self.cudart = cudart
        self.ptr = 0
        self.nbytes = 0

    def reserve(self, nbytes: int) -> bool:
        """Make room for ``nbytes``; return whether the memory moved (a captured CUDA graph is then stale)."""
        if nbytes <= self.nbytes and self.ptr:
            return False
        self.free()
        allocate = getattr(self.cudart, self.allocate)
        self.ptr = int(check(self.cudart, allocate(max(nbytes, 1)), f"{self.allocate}({nbytes})"))
        self.nbytes = max(nbytes, 1)
        return True

    def free(self) -> None:
        if self.ptr:
            getattr(self.cudart, self.release_call)(self.ptr)
            self.ptr, self.nbytes = 0, 0


class DeviceBuffer(_Allocation):
    """Device memory for one tensor (``cudaMalloc``)."""

    def upload(self, array: np.ndarray, stream: Stream) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        check(self.cudart, self.cudart.cudaMemcpyAsync(self.ptr, array.ctypes.data, array.nbytes, kind, stream.handle),
              "cudaMemcpyAsync host to device")

    def download(self, array: np.ndarray, stream: Stream) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        check(self.cudart, self.cudart.cudaMemcpyAsync(array.ctypes.data, self.ptr, array.nbytes, kind, stream.handle),
              "cudaMemcpyAsync device to host")


class PinnedBuffer(_Allocation):
    """Page-locked host memory (``cudaMallocHost``) for one tensor: asynchronous copies from pageable memory
    are staged and serialized by the driver, from pinned memory they are real DMA (NVIDIA's samples pin)."""

    allocate, release_call = "cudaMallocHost", "cudaFreeHost"

    def view(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A numpy array over the first bytes of this buffer (valid until the next :meth:`reserve`)."""
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        self.reserve(count * dtype.itemsize)
        raw = (ctypes.c_char * self.nbytes).from_address(self.ptr)
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)


class GraphLauncher:
    """Runs one enqueue function through a CUDA graph captured per ``key`` (shapes, profile, addresses).

    As trtexec does: on a new key, enqueue once and synchronize (TensorRT may allocate or initialize on
    the first run after a shape change), then capture one enqueue on the (non-default) stream in
    thread-local mode. If the enqueue or the capture fails, that key runs without a graph from then on.
    Up to ``keep`` graphs stay instantiated (least recently used dropped first), so callers alternating
    between a few shapes replay rather than recapture every call.
    """

    def __init__(self, cudart: ModuleType, keep: int = DEFAULT_GRAPHS_KEPT) -> None:
        self.cudart = cudart
        self.keep = keep
        self.graphs: OrderedDict[Hashable, Any] = OrderedDict()
        self.captures = 0
        self.uncapturable: set[Hashable] = set()

    def run(self, key: Hashable, enqueue: Callable[[], bool], stream: Stream) -> bool:
        """Run ``enqueue``'s work for ``key``; return False only when a plain enqueue failed."""
        graph_exec = self.graphs.get(key)
        if graph_exec is not None:
            self.graphs.move_to_end(key)
            check(self.cudart, self.cudart.cudaGraphLaunch(graph_exec, stream.handle), "cudaGraphLaunch")
            return True
        if key in self.uncapturable:
            return enqueue()
        if not enqueue():
            return False
        stream.synchronize()
        graph_exec = self._capture(enqueue, stream)
        if graph_exec is None:
            self.uncapturable.add(key)
        else:
            self.graphs[key] = graph_exec
            while len(self.graphs) > self.keep:
                self._destroy(self.graphs.popitem(last=False)[1])
        return True  # the warm-up enqueue already produced this call's results

    def _capture(self, enqueue: Callable[[], bool], stream: Stream) -> Any:
        cudart = self.cudart
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        if int(cudart.cudaStreamBeginCapture(stream.handle, mode)[0]) != 0:
            return None
        try:
            ok = enqueue()
        except Exception:  # whatever happens, the stream must leave capture mode
            ok = False
        err, graph = cudart.cudaStreamEndCapture(stream.handle)
        if not ok or int(err) != 0 or graph is None:
            if graph is not None and int(err) == 0:
                cudart.cudaGraphDestroy(graph)
            return None
        err, graph_exec = cudart.cudaGraphInstantiate(graph, 0)
        cudart.cudaGraphDestroy(graph)
        if int(err) != 0:
            return None
        self.captures += 1
        return graph_exec

    def _destroy(self, graph_exec: Any) -> None:
        self.cudart.cudaGraphExecDestroy(graph_exec)

    def release(self) -> None:
        """Drop every graph (also when a buffer moved: the addresses baked into them are stale)."""
        while self.graphs:
            self._destroy(self.graphs.popitem()[1])
