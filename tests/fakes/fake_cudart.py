"""A fake ``cuda.bindings.runtime``: device memory is host memory, streams run at once, graphs replay ops.

Every public name here exists in the real cuda-python module (tests/test_tensorrt_fakes.py checks it),
and calls return ``(err, value...)`` tuples as the real ones do. Counters let tests see allocations,
captures and launches.
"""

from __future__ import annotations

import ctypes
import enum
import threading
from dataclasses import dataclass, field
from typing import Any


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2
    cudaErrorInsufficientDriver = 35
    cudaErrorStreamCaptureInvalidated = 901


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


class cudaStreamCaptureMode(enum.IntEnum):
    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1


cudaStreamNonBlocking = 1
OK = cudaError_t.cudaSuccess


@dataclass
class _Props:
    name: bytes
    major: int
    minor: int
    totalGlobalMem: int


class _Stream:
    _next = 0x1000

    def __init__(self) -> None:
        _Stream._next += 16
        self.ptr = _Stream._next
        self.capturing: list[Any] | None = None  # recorded ops while capturing
        self.invalidated = False

    def __int__(self) -> int:
        return self.ptr


@dataclass
class _Graph:
    ops: list[Any] = field(default_factory=list)


class FakeCudart:
    """One fake GPU (or none: ``devices=0`` behaves like a machine without a driver, error 35)."""

    cudaError_t = cudaError_t
    cudaMemcpyKind = cudaMemcpyKind
    cudaStreamCaptureMode = cudaStreamCaptureMode
    cudaStreamNonBlocking = cudaStreamNonBlocking

    def __init__(self, devices: int = 1, name: str = "NVIDIA H100 80GB HBM3", capability: tuple[int, int] = (9, 0)):
        self._devices, self._name, self._capability = devices, name, capability
        self._memory: dict[int, Any] = {}
        self._streams: dict[int, _Stream] = {}
        self._lock = threading.Lock()
        self.mallocs = 0
        self.frees = 0
        self.captures = 0
        self.launches = 0

    # devices
    def cudaGetDeviceCount(self) -> tuple[Any, Any]:
        return (OK, self._devices) if self._devices else (cudaError_t.cudaErrorInsufficientDriver, None)

    def cudaGetDeviceProperties(self, index: int) -> tuple[Any, Any]:
        return OK, _Props(self._name.encode(), *self._capability, 80 << 30)

    def cudaGetErrorString(self, err: Any) -> tuple[Any, bytes]:
        return OK, {35: b"CUDA driver version is insufficient for CUDA runtime version"}.get(int(err), b"fake error")

    def cudaSetDevice(self, index: int) -> tuple[Any]:
        return (OK,)

    # streams
    def cudaStreamCreateWithFlags(self, flags: int) -> tuple[Any, Any]:
        stream = _Stream()
        self._streams[stream.ptr] = stream
        return OK, stream

    def stream(self, handle: Any) -> _Stream:
        """The fake stream behind a handle or its integer (for the fake TensorRT)."""
        return self._streams[int(handle)]

    def cudaStreamSynchronize(self, stream: Any) -> tuple[Any]:
        return (OK,)

    def cudaStreamDestroy(self, stream: Any) -> tuple[Any]:
        self._streams.pop(int(stream), None)
        return (OK,)

    # memory: a ctypes buffer per allocation, so pointers are real addresses numpy can read
    def cudaMalloc(self, nbytes: int) -> tuple[Any, Any]:
        buffer = ctypes.create_string_buffer(nbytes)
        ptr = ctypes.addressof(buffer)
        with self._lock:
            self._memory[ptr] = buffer
            self.mallocs += 1
        return OK, ptr

    def cudaFree(self, ptr: int) -> tuple[Any]:
        with self._lock:
            self._memory.pop(int(ptr))
            self.frees += 1
        return (OK,)

    def cudaMemcpyAsync(self, dst: int, src: int, count: int, kind: Any, stream: Any) -> tuple[Any]:
        device_ptr = dst if kind == cudaMemcpyKind.cudaMemcpyHostToDevice else src
        if not any(p <= device_ptr and device_ptr + count <= p + len(b) for p, b in self._memory.items()):
            raise AssertionError(f"fake cudart: copy of {count} bytes outside any allocation at {device_ptr:#x}")
        ctypes.memmove(dst, src, count)
        return (OK,)

    # graphs: a capturing stream records the fake TensorRT's enqueues instead of running them
    def cudaStreamBeginCapture(self, stream: Any, mode: Any) -> tuple[Any]:
        self.stream(stream).capturing = []
        return (OK,)

    def cudaStreamEndCapture(self, stream: Any) -> tuple[Any, Any]:
        fake = self.stream(stream)
        ops, fake.capturing = fake.capturing, None
        if fake.invalidated:
            fake.invalidated = False
            return cudaError_t.cudaErrorStreamCaptureInvalidated, None
        self.captures += 1
        return OK, _Graph(ops or [])

    def cudaGraphInstantiate(self, graph: _Graph, flags: int) -> tuple[Any, Any]:
        return OK, _Graph(list(graph.ops))

    def cudaGraphLaunch(self, graph_exec: _Graph, stream: Any) -> tuple[Any]:
        self.launches += 1
        for op in graph_exec.ops:
            op()
        return (OK,)

    def cudaGraphDestroy(self, graph: Any) -> tuple[Any]:
        return (OK,)

    def cudaGraphExecDestroy(self, graph_exec: Any) -> tuple[Any]:
        return (OK,)
