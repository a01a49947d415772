"""``TensorRTStepper``: the caption decoder's visual and step graphs as TensorRT engines, the KV cache kept in
device buffers that are allocated once and reused at every step.

Never run on a GPU (no machine here has one): tested against the fake tensorrt and fake cudart (tests/fakes),
which run the same graphs with onnxruntime behind the same calls.

- Buffers: every tensor gets one device buffer (and the host-side ones one pinned staging buffer) sized for the
  largest shape the manifest allows (B, M, and the cache at the position table's length), allocated at
  construction; no step allocates.
- Cache: two buffers per cache tensor, used in turn. A step reads ``past_key`` from one and writes
  ``present_key`` (past + new, [L,B,H,P+S,D], contiguous) into the other; that layout is exactly the next step's
  past, so the roles swap and nothing is copied. ``select`` (beam reordering, dropping finished rows) gathers
  rows device to device into the idle buffer and swaps again.
- The visual keys/values the visual engine writes stay on the device and are bound as the step's inputs; the
  visual mask the visual engine read is bound as-is too.
- Per step only the new token ids and the masks go up (a few bytes per row, through the pinned buffers) and
  the logits come down.
- Profiles: each step runs on the narrowest profile covering its shapes (``fusionrt build`` gives the step graph
  S=1 buckets over P, then the full range), one execution context per profile used, each switched to its
  profile once. Shapes outside every profile: a BackendError listing the profiles.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from fusionrt.bundle.manifest import Bundle
from fusionrt.caption.steppers import CAPTION_STEP, CAPTION_VISUAL, cache_shape
from fusionrt.errors import BackendError, InputError
from fusionrt.runtime.backends.tensorrt.cuda import DeviceBuffer, PinnedBuffer, Stream
from fusionrt.runtime.backends.tensorrt.device import check, cuda_device, import_cudart
from fusionrt.runtime.backends.tensorrt.profiles import describe_ranges, tightest_profile
from fusionrt.runtime.backends.tensorrt.runner import EngineTensors, load_engine, recent, set_input_shapes

CACHE = ("key", "value")


class _Engine:
    """One deserialized engine with a context per profile it has been asked for."""

    def __init__(self, bundle: Bundle, graph: str, precision: str, device: Any, cudart: ModuleType) -> None:
        self.spec = bundle.graph(graph)
        self.runtime, self.engine, self.tensors, self.logger, self.entry = load_engine(
            bundle, self.spec, precision, device, cudart)
        self.contexts: dict[int, Any] = {}

    def context_for(self, shapes: dict[str, tuple[int, ...]], stream: Stream) -> tuple[int, Any]:
        tensors: EngineTensors = self.tensors
        profile = tightest_profile(tensors.ranges, shapes)
        if profile is None:
            raise BackendError("input shapes", f"shapes inside one profile of {self.entry.file}: "
                               f"{describe_ranges(tensors.ranges)}",
                               ", ".join(f"{n} {list(shapes[n])}" for n in tensors.inputs))
        context = self.contexts.get(profile)
        if context is None:
            context = self.engine.create_execution_context()
            if context is None:
                raise BackendError("execution context", "one more context (device memory for activations)",
                                   "None from create_execution_context (out of GPU memory?)")
            if not context.set_optimization_profile_async(profile, stream.ptr):
                raise BackendError("optimization profile", f"profile {profile} selectable", "refused")
            self.contexts[profile] = context
        return profile, context

    def run(self, shapes: dict[str, tuple[int, ...]], addresses: dict[str, int], stream: Stream) -> None:
        """Set the input shapes, check the output shapes against ``shapes`` (the buffers are sized for those),
        bind every tensor's address and enqueue on ``stream`` (not synchronized)."""
        profile, context = self.context_for(shapes, stream)
        set_input_shapes(context, self.tensors, shapes, profile)
        for name in self.tensors.outputs:
            # An engine writing more than the graph's contract says would overrun a buffer: refuse instead.
            # (-1: a dim the engine leaves to run time; never after infer_shapes on TensorRT itself.)
            got = tuple(int(d) for d in context.get_tensor_shape(name))
            expected = shapes[name]
            if len(got) != len(expected) or any(g not in (-1, e) for g, e in zip(got, expected, strict=False)):
                raise BackendError(f"output {name} of {self.entry.file}", f"shape {list(expected)} (the graph's "
                                   "contract, which the buffers are sized for)", str(list(got)))
        for name, ptr in addresses.items():
            if not context.set_tensor_address(name, ptr):
                raise BackendError(f"tensor {name}", "a device address TensorRT accepts", f"{ptr:#x} refused")
        if not context.execute_async_v3(stream.ptr):
            raise BackendError("execute_async_v3", "a successful enqueue", f"failure ({recent(self.logger.messages)})")


class TensorRTStepper:
    """The :class:`~fusionrt.caption.steppers.Stepper` protocol on TensorRT engines built by ``fusionrt build``
    (``caption_visual`` and ``caption_step`` at ``precision``). ``device``: CUDA index; ``threads`` is accepted
    for the Captioner's common signature and unused."""

    def __init__(self, bundle: Bundle, precision: str = "fp32", threads: int | None = None, device: int = 0) -> None:
        del threads
        cudart = import_cudart()
        self.cudart = cudart
        self.device = cuda_device(device, cudart)  # before any TensorRT object exists (no device: a crash)
        self.model = bundle.model
        self.visual = _Engine(bundle, CAPTION_VISUAL, precision, self.device, cudart)
        self.stepper = _Engine(bundle, CAPTION_STEP, precision, self.device, cudart)
        self.stream = Stream(cudart)
        step = self.stepper.spec
        self.max_text_len = int(self.model["max_text_len"])
        self.max_batch, self.max_regions = step.dims["B"].max, step.dims["M"].max
        self.max_new = step.dims["S"].max
        self.vocab = int(self.model["vocab_size"])
        dtypes = {**self.visual.tensors.dtypes, **self.stepper.tensors.dtypes}
        self.dtypes = dtypes
        cache_bytes = int(np.prod(cache_shape(self.model, self.max_batch, self.max_text_len))) * 4
        visual_bytes = int(np.prod(cache_shape(self.model, self.max_batch, self.max_regions))) * 4
        feature_dim = int(self.model["visual_dim"])
        sizes = {"visual_feats": self.max_batch * self.max_regions * feature_dim * 4,
                 "visual_mask": self.max_batch * self.max_regions, "input_ids": self.max_batch * self.max_new * 8,
                 "new_mask": self.max_batch * self.max_new, "past_mask": self.max_batch * self.max_text_len,
                 "logits": self.max_batch * self.max_new * self.vocab * 4}
        # Allocated once, at the largest shapes: no step allocates (tested: the fake counts cudaMalloc).
        self.buffers = {name: self._device(size) for name, size in sizes.items()}
        self.host = {name: PinnedBuffer(cudart) for name in sizes}
        for name, size in sizes.items():
            self.host[name].reserve(size)
        self.cache = {kind: [self._device(cache_bytes), self._device(cache_bytes)] for kind in CACHE}
        self.visual_cache = {kind: [self._device(visual_bytes), self._device(visual_bytes)] for kind in CACHE}
        self.turn = self.visual_turn = 0
        self.batch = self.past_length = 0
        self.regions = 0
        self.visual_mask = np.zeros((0, 0), dtype=bool)
        self.past_mask = np.zeros((0, 0), dtype=bool)

    def _device(self, nbytes: int) -> DeviceBuffer:
        buffer = DeviceBuffer(self.cudart)
        buffer.reserve(nbytes)
        return buffer

    def _upload(self, name: str, array: np.ndarray) -> None:
        """Host array -> its device buffer, staged in pinned memory (asynchronous, on the stepper's stream)."""
        staged = self.host[name].view(array.shape, self.dtypes[name])
        staged[...] = array
        self.buffers[name].upload(staged, self.stream)

    def _check_device(self) -> None:
        check(self.cudart, self.cudart.cudaSetDevice(self.device.index), "cudaSetDevice")  # the calling thread's

    def start(self, visual_feats: np.ndarray, visual_mask: np.ndarray) -> None:
        self._check_device()
        batch, regions = visual_mask.shape
        if not 1 <= batch <= self.max_batch or not 1 <= regions <= self.max_regions:
            raise InputError("visual_feats", f"[B<={self.max_batch}, M<={self.max_regions}, ...]",
                             str(list(visual_feats.shape)))
        self._upload("visual_feats", np.ascontiguousarray(visual_feats, dtype=np.float32))
        self._upload("visual_mask", np.ascontiguousarray(visual_mask, dtype=bool))
        kv = cache_shape(self.model, batch, regions)
        self.visual_turn = 0
        self.visual.run({"visual_feats": visual_feats.shape, "visual_mask": visual_mask.shape,
                         "visual_key": kv, "visual_value": kv},
                        {"visual_feats": self.buffers["visual_feats"].ptr,
                         "visual_mask": self.buffers["visual_mask"].ptr,
                         "visual_key": self.visual_cache["key"][0].ptr,
                         "visual_value": self.visual_cache["value"][0].ptr}, self.stream)
        self.stream.synchronize()  # the pinned staging buffers are reused by the first step
        self.visual_shape = kv
        self.visual_mask = np.ascontiguousarray(visual_mask, dtype=bool)
        self.batch, self.regions = batch, regions
        self.past_mask = np.zeros((batch, 0), dtype=bool)
        self.past_length = 0
        self.turn = 0

    def step(self, ids: np.ndarray, new_mask: np.ndarray | None = None) -> np.ndarray:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        batch, new = ids.shape
        if batch != self.batch:
            raise InputError("ids", f"one row per row of the batch ({self.batch})", str(list(ids.shape)))
        if self.past_length + new > self.max_text_len:
            raise InputError("tokens", f"at most {self.max_text_len} text positions (the position table)",
                             f"{self.past_length} + {new}")
        self._check_device()
        new_mask = np.ones(ids.shape, dtype=bool) if new_mask is None else np.ascontiguousarray(new_mask, dtype=bool)
        past = self.past_length
        self._upload("input_ids", ids)
        self._upload("new_mask", new_mask)
        self._upload("past_mask", self.past_mask)
        past_shape = cache_shape(self.model, batch, past)
        shapes = {"input_ids": ids.shape, "new_mask": new_mask.shape, "past_mask": self.past_mask.shape,
                  "past_key": past_shape, "past_value": past_shape, "visual_key": self.visual_shape,
                  "visual_value": self.visual_shape, "visual_mask": self.visual_mask.shape,
                  "logits": (batch, new, self.vocab), "present_key": cache_shape(self.model, batch, past + new),
                  "present_value": cache_shape(self.model, batch, past + new)}
        read, write = self.turn, 1 - self.turn
        addresses = {name: self.buffers[name].ptr for name in ("input_ids", "new_mask", "past_mask", "visual_mask",
                                                               "logits")}
        for kind in CACHE:
            addresses[f"past_{kind}"] = self.cache[kind][read].ptr
            addresses[f"present_{kind}"] = self.cache[kind][write].ptr
            addresses[f"visual_{kind}"] = self.visual_cache[kind][self.visual_turn].ptr
        self.stepper.run(shapes, addresses, self.stream)
        logits = self.host["logits"].view((batch, new, self.vocab), self.dtypes["logits"])
        self.buffers["logits"].download(logits, self.stream)
        self.stream.synchronize()
        self.turn = write  # present (past + new, contiguous) is the next step's past: no copy
        self.past_mask = np.concatenate([self.past_mask, new_mask], axis=1)
        self.past_length += new
        return logits.astype(np.float32, copy=True)  # the pinned buffer is reused by the next step

    def _gather(self, buffers: list[DeviceBuffer], turn: int, shape: tuple[int, ...], rows: np.ndarray) -> None:
        """Rows ``rows`` of the [L,B,...] tensor in ``buffers[turn]`` into ``buffers[1 - turn]``, on the device."""
        layers, batch = shape[0], shape[1]
        chunk = int(np.prod(shape[2:])) * 4
        if chunk == 0:
            return
        source, target = buffers[turn].ptr, buffers[1 - turn].ptr
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        for layer in range(layers):
            for row, origin in enumerate(rows):
                check(self.cudart, self.cudart.cudaMemcpyAsync(
                    target + (layer * len(rows) + row) * chunk, source + (layer * batch + int(origin)) * chunk, chunk,
                    kind, self.stream.handle), "cudaMemcpyAsync device to device")

    def select(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) > self.max_batch or (len(rows) and not 0 <= rows.min() <= rows.max() < self.batch):
            raise InputError("rows", f"rows of the batch [0, {self.batch}), at most {self.max_batch}", str(rows))
        self._check_device()
        for kind in CACHE:
            self._gather(self.cache[kind], self.turn, cache_shape(self.model, self.batch, self.past_length), rows)
            self._gather(self.visual_cache[kind], self.visual_turn, self.visual_shape, rows)
        self.turn, self.visual_turn = 1 - self.turn, 1 - self.visual_turn
        self.visual_mask = self.visual_mask[rows]
        self._upload("visual_mask", self.visual_mask)
        self.stream.synchronize()
        self.past_mask = self.past_mask[rows]
        self.visual_shape = cache_shape(self.model, len(rows), self.regions)
        self.batch = len(rows)

    def close(self) -> None:
        """Wait for queued work, then free every buffer and the stream (contexts and engines go with the object)."""
        if self.stream.handle is None:
            return
        self.stream.synchronize()
        for buffer in (*self.buffers.values(), *self.host.values(),
                       *(b for pair in (*self.cache.values(), *self.visual_cache.values()) for b in pair)):
            buffer.free()
        self.stream.destroy()
        self.visual.contexts.clear()
        self.stepper.contexts.clear()
