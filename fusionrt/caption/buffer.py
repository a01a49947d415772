"""Steppers over the buffer form of the step graph (``caption_step_buffer``, :mod:`fusionrt.model.caption_buffer`).

The KV cache is one host buffer per K and V of the bundle's capacity (``max_text_len`` positions), allocated
once and reused by the next sequence of the same batch size. The backend reads it in place every step (an
``OrtValue`` / ``ov.Tensor`` over the same memory, bound once); the graph returns only the new positions' keys
and values, which the stepper copies into the buffer at the current position. Nothing grows or is reallocated
between steps, so a step costs the same at every position; the price is attention over all C slots from the
first step on.

Same interface as :class:`fusionrt.caption.steppers.OrtStepper` (``start``, ``step``, ``select``, ``batch``,
``past_length``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fusionrt.bundle.manifest import Bundle
from fusionrt.caption.steppers import CAPTION_VISUAL, OpenVinoStepper, OrtStepper, cache_shape
from fusionrt.errors import InputError

CAPTION_STEP_BUFFER = "caption_step_buffer"


class HostCache:
    """The buffers of one sequence: ``key`` / ``value`` [L,B,heads,C,head_dim], ``mask`` [B,C] (slots written
    and not padding) and ``position`` int64 [1] (slots written so far)."""

    def __init__(self, model: dict[str, Any], batch: int) -> None:
        self.capacity = int(model["max_text_len"])
        self.key = np.zeros(cache_shape(model, batch, self.capacity), dtype=np.float32)
        self.value = np.zeros_like(self.key)
        self.mask = np.zeros((batch, self.capacity), dtype=bool)
        self.position = np.zeros(1, dtype=np.int64)

    def reset(self) -> None:
        """Start a new sequence in the same buffers: slots are unmarked, their stale values stay (the graph gives
        unmarked slots zero weight), so nothing is reallocated or rebound."""
        self.mask.fill(False)
        self.position[0] = 0

    def fits(self, batch: int) -> bool:
        return self.mask.shape[0] == batch

    def check_room(self, new: int) -> None:
        if int(self.position[0]) + new > self.capacity:
            raise InputError("tokens", f"at most {self.capacity} text positions (the position table)",
                             f"{int(self.position[0])} + {new}")

    def write(self, new_key: np.ndarray, new_value: np.ndarray, new_mask: np.ndarray) -> None:
        start = int(self.position[0])
        end = start + new_mask.shape[1]
        self.key[:, :, :, start:end] = new_key
        self.value[:, :, :, start:end] = new_value
        self.mask[:, start:end] = new_mask
        self.position[0] = end

    def select(self, rows: np.ndarray) -> None:
        # fancy indexing on axis 1 may return a non-C-contiguous array: the backends share C-contiguous memory
        self.key = np.ascontiguousarray(self.key[:, rows])
        self.value = np.ascontiguousarray(self.value[:, rows])
        self.mask = np.ascontiguousarray(self.mask[rows])


class OrtBufferStepper(OrtStepper):
    """The buffer form on ONNX Runtime: the buffers bound once as OrtValues over their numpy memory, outputs
    bound to preallocated arrays while S stays the same (one token a step), so a step allocates nothing."""

    step_graph = CAPTION_STEP_BUFFER

    def start(self, visual_feats: np.ndarray, visual_mask: np.ndarray) -> None:
        self._run_visual(visual_feats, visual_mask)
        self.past_length = 0
        if getattr(self, "cache", None) is not None and self.cache.fits(self.batch):
            self.cache.reset()  # same batch size: the bound buffers serve the new sequence
            self._bind_visual()
            return
        self.cache = HostCache(self.model, self.batch)
        self._binding = self.step_session.io_binding()
        self._bind_state()

    def _bind_state(self) -> None:
        # OrtValue.ortvalue_from_numpy shares a CPU array's memory: writes into the buffers reach the graph
        self._state = {}
        for name, array in (("cache_key", self.cache.key), ("cache_value", self.cache.value),
                            ("cache_mask", self.cache.mask), ("position", self.cache.position)):
            value = self.ort.OrtValue.ortvalue_from_numpy(array)
            if value.data_ptr() != array.ctypes.data:  # a copy would never see the writes
                raise RuntimeError(f"{name}: onnxruntime copied the buffer instead of sharing it")
            self._state[name] = value
        for name, value in self._state.items():
            self._binding.bind_ortvalue_input(name, value)
        self._bind_visual()
        self._bind_outputs(1)  # one token a step, the usual case: the first step then costs like the others

    def _bind_outputs(self, new: int) -> None:
        model = self.model
        self._logits = np.empty((self.batch, new, int(model["vocab_size"])), dtype=np.float32)
        self._new_key = np.empty(cache_shape(model, self.batch, new), dtype=np.float32)
        self._new_value = np.empty_like(self._new_key)
        self._outputs = [self._value(a) for a in (self._logits, self._new_key, self._new_value)]
        for name, value in zip(("logits", "new_key", "new_value"), self._outputs, strict=True):
            self._binding.bind_ortvalue_output(name, value)
        self._outputs_new = new

    def step(self, ids: np.ndarray, new_mask: np.ndarray | None = None) -> np.ndarray:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        self.cache.check_room(ids.shape[1])
        new_mask = np.ones(ids.shape, dtype=bool) if new_mask is None else np.ascontiguousarray(new_mask, dtype=bool)
        binding = self._binding
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("new_mask", new_mask)
        if self._outputs_new != ids.shape[1]:
            self._bind_outputs(ids.shape[1])
        self.step_session.run_with_iobinding(binding)
        self.cache.write(self._new_key, self._new_value, new_mask)
        self.past_length += ids.shape[1]
        return self._logits.copy()  # the next step overwrites the bound array

    def select(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        self.cache.select(rows)
        self.visual_key = self._value(self.visual_key.numpy()[:, rows])
        self.visual_value = self._value(self.visual_value.numpy()[:, rows])
        self.visual_mask = self._value(self.visual_mask.numpy()[rows])
        self.batch = len(rows)
        self._bind_state()


class OpenVinoBufferStepper(OpenVinoStepper):
    """The buffer form on OpenVINO: one infer request whose cache inputs are ``ov.Tensor``s sharing the
    buffers' memory, set once per sequence; a step sets the new ids and mask and infers."""

    def __init__(self, bundle: Bundle, precision: str = "fp32", threads: int | None = None, hint: str = "f32") -> None:
        from fusionrt.runtime.backends.openvino import compiled_from_onnx, import_openvino

        self.ov = import_openvino()
        self.model = bundle.model
        self.visual_request = compiled_from_onnx(bundle.graph_path(CAPTION_VISUAL, precision), hint=hint,
                                                 threads=threads).create_infer_request()
        self.request = compiled_from_onnx(bundle.graph_path(CAPTION_STEP_BUFFER, precision), hint=hint,
                                          threads=threads).create_infer_request()
        self.max_text_len = int(self.model["max_text_len"])
        self.batch = 0
        self.past_length = 0

    def _shared(self, array: np.ndarray) -> Any:
        return self.ov.Tensor(array, shared_memory=True)

    def start(self, visual_feats: np.ndarray, visual_mask: np.ndarray) -> None:
        super().start(visual_feats, visual_mask)  # the visual cache as ov.Tensors (own copies)
        if getattr(self, "cache", None) is not None and self.cache.fits(self.batch):
            self.cache.reset()  # same batch size: the set buffers serve the new sequence
            for name in ("visual_key", "visual_value", "visual_mask"):
                self.request.set_tensor(name, getattr(self, name))
            return
        self.cache = HostCache(self.model, self.batch)
        self._set_state()

    def _set_state(self) -> None:
        for name, array in (("cache_key", self.cache.key), ("cache_value", self.cache.value),
                            ("cache_mask", self.cache.mask), ("position", self.cache.position)):
            self.request.set_tensor(name, self._shared(array))
        for name in ("visual_key", "visual_value", "visual_mask"):
            self.request.set_tensor(name, getattr(self, name))

    def step(self, ids: np.ndarray, new_mask: np.ndarray | None = None) -> np.ndarray:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        self.cache.check_room(ids.shape[1])
        new_mask = np.ones(ids.shape, dtype=bool) if new_mask is None else np.ascontiguousarray(new_mask, dtype=bool)
        request = self.request
        request.set_tensor("input_ids", self._shared(ids))
        request.set_tensor("new_mask", self._shared(new_mask))
        request.infer()
        self.cache.write(request.get_tensor("new_key").data, request.get_tensor("new_value").data, new_mask)
        self.past_length += ids.shape[1]
        return request.get_tensor("logits").data.copy()

    def select(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        self.cache.select(rows)
        self.visual_key = self._tensor(self.visual_key.data[:, rows])
        self.visual_value = self._tensor(self.visual_value.data[:, rows])
        self.visual_mask = self._tensor(self.visual_mask.data[rows])
        self.batch = len(rows)
        self._set_state()
