"""Streams, device buffers and CUDA graphs over cuda-python (``cuda.bindings.runtime``).

Thin on purpose: every call is a cuda-python call whose error code :func:`.device.check`
turns into a typed error. Buffers grow only when a larger tensor arrives and are reused otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from types import ModuleType
from typing import Any

import numpy as np

from fusionrt.runtime.backends.tensorrt.device import check


class Stream:
    """A non-blocking stream (never the legacy default stream, which would serialize every context)."""

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

    def destroy(self) -> None:
        if self.handle is not None:
            self.cudart.cudaStreamDestroy(self.handle)
            self.handle = None


class DeviceBuffer:
    """Device memory for one tensor; :meth:`reserve` reallocates only when more bytes are needed."""

    def __init__(self, cudart: ModuleType) -> None:
        self.cudart = cudart
        self.ptr = 0
        self.nbytes = 0

    def reserve(self, nbytes: int) -> bool:
        """Make room for ``nbytes``; return whether the buffer moved (a captured CUDA graph is then stale)."""
        if nbytes <= self.nbytes and self.ptr:
            return False
        self.free()
        self.ptr = int(check(self.cudart, self.cudart.cudaMalloc(max(nbytes, 1)), f"cudaMalloc({nbytes})"))
        self.nbytes = max(nbytes, 1)
        return True

    def upload(self, array: np.ndarray, stream: Stream) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        check(self.cudart, self.cudart.cudaMemcpyAsync(self.ptr, array.ctypes.data, array.nbytes, kind, stream.handle),
              "cudaMemcpyAsync host to device")

    def download(self, array: np.ndarray, stream: Stream) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        check(self.cudart, self.cudart.cudaMemcpyAsync(array.ctypes.data, self.ptr, array.nbytes, kind, stream.handle),
              "cudaMemcpyAsync device to host")

    def free(self) -> None:
        if self.ptr:
            self.cudart.cudaFree(self.ptr)
            self.ptr, self.nbytes = 0, 0


class GraphLauncher:
    """Runs one enqueue function through a CUDA graph captured per ``key`` (shapes, profile, addresses).

    As trtexec does: on a new key, enqueue once and synchronize (TensorRT may allocate or initialize on
    the first run after a shape change), then capture one enqueue on the (non-default) stream in
    thread-local mode. If the enqueue or the capture fails, that key runs without a graph from then on.
    """

    def __init__(self, cudart: ModuleType) -> None:
        self.cudart = cudart
        self.key: Hashable | None = None
        self.graph_exec: Any = None
        self.captures = 0
        self.uncapturable: set[Hashable] = set()

    def run(self, key: Hashable, enqueue: Callable[[], bool], stream: Stream) -> bool:
        """Run ``enqueue``'s work for ``key``; return False only when a plain enqueue failed."""
        if key != self.key:
            self.release()
            self.key = key
            if key not in self.uncapturable:
                if not enqueue():
                    return False
                stream.synchronize()
                self.graph_exec = self._capture(enqueue, stream)
                if self.graph_exec is None:
                    self.uncapturable.add(key)
                return True  # the warm-up enqueue already produced this call's results
        if self.graph_exec is None:
            return enqueue()
        check(self.cudart, self.cudart.cudaGraphLaunch(self.graph_exec, stream.handle), "cudaGraphLaunch")
        return True

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

    def release(self) -> None:
        if self.graph_exec is not None:
            self.cudart.cudaGraphExecDestroy(self.graph_exec)
            self.graph_exec = None
        self.key = None
