"""A fake ``cuda.bindings.runtime``: device memory is host memory, streams run at once (or, with
``deferred=True``, only when something waits for them, as a busy GPU would), graphs replay ops.

Every public name here exists in the real cuda-python module (tests/test_tensorrt_fakes.py checks it),
and calls return ``(err, value...)`` tuples as the real ones do. Counters let tests see allocations,
captures and launches; the current device is per thread, as in CUDA, and every allocation records it.
Waiting on an event (``cudaStreamWaitEvent``) runs the event's stream up to the event at once: a valid
serialization of what a GPU would do.
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
    cudaMemcpyDeviceToDevice = 3


class cudaStreamCaptureMode(enum.IntEnum):
    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1


cudaStreamNonBlocking = 1
cudaEventDisableTiming = 2
OK = cudaError_t.cudaSuccess


@dataclass
class _Props:
    name: bytes
    major: int
    minor: int
    totalGlobalMem: int
    integrated: int


class _Stream:
    _next = 0x1000

    def __init__(self, ptr: int | None = None) -> None:
        if ptr is None:
            _Stream._next += 16
            ptr = _Stream._next
        self.ptr = ptr
        self.capturing: list[Any] | None = None  # recorded ops while capturing
        self.invalidated = False
        self.pending: list[_Op] = []  # deferred work, oldest first
        self.launched = 0  # ops ever queued (an event marks a count)

    def __int__(self) -> int:
        return self.ptr

    def run_until(self, mark: int) -> None:
        """Run queued ops until ``mark`` of them have been queued and run."""
        while self.pending and self.launched - len(self.pending) < mark:
            self.pending.pop(0)()


class _Op:
    def __init__(self, work: Any) -> None:
        self.work, self.done = work, False

    def __call__(self) -> None:
        self.work()
        self.done = True


class _Event:
    def __init__(self) -> None:
        self.stream: _Stream | None = None
        self.mark = 0

    def __int__(self) -> int:
        return id(self)


@dataclass
class _Graph:
    ops: list[Any] = field(default_factory=list)


class FakeCudart:
    """One fake GPU (or none: ``devices=0`` behaves like a machine without a driver, error 35)."""

    cudaError_t = cudaError_t
    cudaMemcpyKind = cudaMemcpyKind
    cudaStreamCaptureMode = cudaStreamCaptureMode
    cudaStreamNonBlocking = cudaStreamNonBlocking
    cudaEventDisableTiming = cudaEventDisableTiming

    def __init__(self, devices: int = 1, name: str = "NVIDIA H100 80GB HBM3", capability: tuple[int, int] = (9, 0),
                 deferred: bool = False, integrated: bool = False, memory_gib: int = 80):
        self._devices, self._name, self._capability = devices, name, capability
        self._integrated, self._memory_bytes = integrated, memory_gib << 30
        self.deferred = deferred
        self._memory: dict[int, Any] = {}
        self._pinned: dict[int, Any] = {}
        self._streams: dict[int, _Stream] = {0: _Stream(0)}  # the legacy default stream
        self._lock = threading.Lock()
        self._current = threading.local()
        self.mallocs = 0
        self.frees = 0
        self.captures = 0
        self.launches = 0
        self.devices_used: list[tuple[str, int]] = []  # (what, current device) for every allocation
        self.host_copies: list[tuple[int, bool]] = []  # (host pointer, pinned) of every async copy

    def current_device(self) -> int:
        return getattr(self._current, "device", 0)

    def _used(self, what: str) -> None:
        with self._lock:
            self.devices_used.append((what, self.current_device()))

    def launch(self, stream: Any, work: Any) -> None:
        """Queue ``work`` on ``stream`` (run now unless deferred; recorded when the stream is capturing)."""
        fake = self.stream(stream)
        if fake.capturing is not None:
            fake.capturing.append(work)
        elif self.deferred:
            fake.pending.append(_Op(work))
            fake.launched += 1
        else:
            work()

    def pending(self) -> int:
        """Ops queued on every stream and not run yet."""
        return sum(len(s.pending) for s in self._streams.values())

    # devices
    def cudaGetDeviceCount(self) -> tuple[Any, Any]:
        return (OK, self._devices) if self._devices else (cudaError_t.cudaErrorInsufficientDriver, None)

    def cudaGetDeviceProperties(self, index: int) -> tuple[Any, Any]:
        return OK, _Props(self._name.encode(), *self._capability, self._memory_bytes, int(self._integrated))

    def cudaGetErrorString(self, err: Any) -> tuple[Any, bytes]:
        return OK, {35: b"CUDA driver version is insufficient for CUDA runtime version"}.get(int(err), b"fake error")

    def cudaSetDevice(self, index: int) -> tuple[Any]:
        self._current.device = index
        return (OK,)

    def cudaGetDevice(self) -> tuple[Any, int]:
        return OK, self.current_device()

    # streams
    def cudaStreamCreateWithFlags(self, flags: int) -> tuple[Any, Any]:
        stream = _Stream()
        self._streams[stream.ptr] = stream
        self._used("stream")
        return OK, stream

    def stream(self, handle: Any) -> _Stream:
        """The fake stream behind a handle or its integer (for the fake TensorRT)."""
        return self._streams[int(handle)]

    def cudaStreamSynchronize(self, stream: Any) -> tuple[Any]:
        fake = self.stream(stream)
        fake.run_until(fake.launched)
        return (OK,)

    def cudaStreamDestroy(self, stream: Any) -> tuple[Any]:
        fake = self._streams.pop(int(stream), None)
        if fake is not None:  # CUDA finishes a destroyed stream's queued work
            fake.run_until(fake.launched)
        return (OK,)

    # events: a mark in a stream's queue
    def cudaEventCreateWithFlags(self, flags: int) -> tuple[Any, Any]:
        self._used("event")
        return OK, _Event()

    def cudaEventRecord(self, event: _Event, stream: Any) -> tuple[Any]:
        fake = self.stream(stream)
        event.stream, event.mark = fake, fake.launched
        return (OK,)

    def cudaStreamWaitEvent(self, stream: Any, event: _Event, flags: int) -> tuple[Any]:
        self.stream(stream)  # must exist
        if event.stream is not None:
            event.stream.run_until(event.mark)
        return (OK,)

    def cudaEventSynchronize(self, event: _Event) -> tuple[Any]:
        if event.stream is not None:
            event.stream.run_until(event.mark)
        return (OK,)

    def cudaEventDestroy(self, event: _Event) -> tuple[Any]:
        return (OK,)

    # memory: a ctypes buffer per allocation, so pointers are real addresses numpy can read
    def cudaMalloc(self, nbytes: int) -> tuple[Any, Any]:
        buffer = ctypes.create_string_buffer(nbytes)
        ptr = ctypes.addressof(buffer)
        with self._lock:
            self._memory[ptr] = buffer
            self.mallocs += 1
        self._used("malloc")
        return OK, ptr

    def cudaMallocHost(self, nbytes: int) -> tuple[Any, Any]:
        buffer = ctypes.create_string_buffer(nbytes)
        ptr = ctypes.addressof(buffer)
        with self._lock:
            self._pinned[ptr] = buffer
        self._used("pinned")
        return OK, ptr

    def cudaFreeHost(self, ptr: int) -> tuple[Any]:
        with self._lock:
            self._pinned.pop(int(ptr))
        return (OK,)

    def _is_pinned(self, ptr: int, count: int) -> bool:
        return any(p <= ptr and ptr + count <= p + len(b) for p, b in self._pinned.items())

    def cudaFree(self, ptr: int) -> tuple[Any]:
        with self._lock:
            self._memory.pop(int(ptr))
            self.frees += 1
        return (OK,)

    def _on_device(self, ptr: int, count: int) -> bool:
        return any(p <= ptr and ptr + count <= p + len(b) for p, b in self._memory.items())

    def cudaMemcpyAsync(self, dst: int, src: int, count: int, kind: Any, stream: Any) -> tuple[Any]:
        if kind == cudaMemcpyKind.cudaMemcpyDeviceToDevice:
            if not (self._on_device(dst, count) and self._on_device(src, count)):
                raise AssertionError(f"fake cudart: device copy of {count} bytes outside the allocations")
            self.launch(stream, lambda: ctypes.memmove(dst, src, count))
            return (OK,)
        to_device = kind == cudaMemcpyKind.cudaMemcpyHostToDevice
        device_ptr, host_ptr = (dst, src) if to_device else (src, dst)
        if not any(p <= device_ptr and device_ptr + count <= p + len(b) for p, b in self._memory.items()):
            raise AssertionError(f"fake cudart: copy of {count} bytes outside any allocation at {device_ptr:#x}")
        with self._lock:
            self.host_copies.append((host_ptr, self._is_pinned(host_ptr, count)))
        self.launch(stream, lambda: ctypes.memmove(dst, src, count))
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
