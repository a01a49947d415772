"""Steppers: one decoder step at a time over a KV cache that stays in the backend between steps.

A stepper holds one batch's state: the visual keys/values (computed once by the visual graph), the text
keys/values so far and the text mask. ``step(ids)`` runs the step graph on new tokens ``ids`` [B,S] and returns
``logits`` [B,S,V] as numpy; ``select(rows)`` keeps (and may repeat) rows of the state, for beam search and for
dropping finished rows.

- :class:`OrtStepper`: ONNX Runtime with IO binding: the present keys/values a step returns stay OrtValues and
  are bound as the next step's past, never copied through numpy; only the logits come back.
- :class:`OpenVinoStepper`: OpenVINO, the cache kept in ``ov.Tensor``s between steps.
- :class:`TorchStepper`: the PyTorch original with its own cache (the reference; imports torch).

These run the concat form of the cache (``caption_step``); :mod:`fusionrt.caption.buffer` has the buffer form
and :func:`fusionrt.caption.forms.make_stepper` picks the form a backend runs.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from fusionrt.bundle.manifest import Bundle
from fusionrt.errors import InputError
from fusionrt.runtime.backends.onnxrt import import_onnxruntime, session_from_onnx

CAPTION_VISUAL = "caption_visual"
CAPTION_STEP = "caption_step"


class Stepper(Protocol):
    batch: int
    past_length: int

    def start(self, visual_feats: np.ndarray, visual_mask: np.ndarray) -> None: ...

    def step(self, ids: np.ndarray, new_mask: np.ndarray | None = None) -> np.ndarray: ...

    def select(self, rows: np.ndarray) -> None: ...


def cache_shape(model: dict[str, Any], batch: int, length: int) -> tuple[int, int, int, int, int]:
    return (int(model["layers"]), batch, int(model["heads"]), length, int(model["hidden"]) // int(model["heads"]))


class OrtStepper:
    """The step and visual graphs of a caption bundle on ONNX Runtime, cache kept in OrtValues.

    One IO binding per sequence: the visual cache is bound once in :meth:`start` (and again after
    :meth:`select`); a step rebinds only what changed (new ids and masks, the past cache) and its outputs,
    which ORT allocates at the new length."""

    step_graph = CAPTION_STEP

    def __init__(self, bundle: Bundle, precision: str = "fp32", threads: int | None = None,
                 providers: list[str] | None = None) -> None:
        self.ort = import_onnxruntime()
        self.model = bundle.model
        self.visual_session = session_from_onnx(bundle.graph_path(CAPTION_VISUAL, precision), threads=threads,
                                                providers=providers)
        self.step_session = session_from_onnx(bundle.graph_path(self.step_graph, precision), threads=threads,
                                              providers=providers)
        self.max_text_len = int(self.model["max_text_len"])
        self.batch = 0
        self.past_length = 0

    def _value(self, array: np.ndarray) -> Any:
        return self.ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array))

    def _run_visual(self, visual_feats: np.ndarray, visual_mask: np.ndarray) -> None:
        """The visual graph once per sequence: its K/V stay OrtValues the step graph reads."""
        binding = self.visual_session.io_binding()
        binding.bind_cpu_input("visual_feats", np.ascontiguousarray(visual_feats, dtype=np.float32))
        binding.bind_cpu_input("visual_mask", np.ascontiguousarray(visual_mask, dtype=bool))
        binding.bind_output("visual_key", "cpu")
        binding.bind_output("visual_value", "cpu")
        self.visual_session.run_with_iobinding(binding)
        self.visual_key, self.visual_value = binding.get_outputs()
        self.visual_mask = self._value(visual_mask.astype(bool))
        self.batch = visual_feats.shape[0]

    def start(self, visual_feats: np.ndarray, visual_mask: np.ndarray) -> None:
        self._run_visual(visual_feats, visual_mask)
        empty = np.zeros(cache_shape(self.model, self.batch, 0), dtype=np.float32)
        self.past_key, self.past_value = self._value(empty), self._value(empty)
        self.past_mask = np.zeros((self.batch, 0), dtype=bool)
        self.past_length = 0
        self._binding = self.step_session.io_binding()
        self._bind_visual()

    def _bind_visual(self) -> None:
        for name in ("visual_key", "visual_value", "visual_mask"):
            self._binding.bind_ortvalue_input(name, getattr(self, name))

    def step(self, ids: np.ndarray, new_mask: np.ndarray | None = None) -> np.ndarray:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if self.past_length + ids.shape[1] > self.max_text_len:
            raise InputError("tokens", f"at most {self.max_text_len} text positions (the position table)",
                             f"{self.past_length} + {ids.shape[1]}")
        new_mask = np.ones(ids.shape, dtype=bool) if new_mask is None else np.ascontiguousarray(new_mask, dtype=bool)
        binding = self._binding
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("new_mask", new_mask)
        binding.bind_cpu_input("past_mask", self.past_mask)
        binding.bind_ortvalue_input("past_key", self.past_key)
        binding.bind_ortvalue_input("past_value", self.past_value)
        for name in ("logits", "present_key", "present_value"):  # unallocated: the present grows every step
            binding.bind_output(name, "cpu")
        self.step_session.run_with_iobinding(binding)
        logits, self.past_key, self.past_value = binding.get_outputs()
        self.past_mask = np.concatenate([self.past_mask, new_mask], axis=1)
        self.past_length += ids.shape[1]
        return logits.numpy()

    def select(self, rows: np.ndarray) -> None:
        # A gather on the host: one copy of the cache per call (beam reordering, dropping finished rows).
        rows = np.asarray(rows, dtype=np.int64)
        self.past_key = self._value(self.past_key.numpy()[:, rows])
        self.past_value = self._value(self.past_value.numpy()[:, rows])
        self.visual_key = self._value(self.visual_key.numpy()[:, rows])
        self.visual_value = self._value(self.visual_value.numpy()[:, rows])
        self.visual_mask = self._value(self.visual_mask.numpy()[rows])
        self.past_mask = self.past_mask[rows]
        self.batch = len(rows)
        self._bind_visual()


class OpenVinoStepper:
    """The step and visual graphs on OpenVINO (CPU, f32 hint by default), cache kept in ``ov.Tensor``s: two infer
    requests of the step graph alternate, so the present tensors one request wrote are the other's past inputs
    (passed with ``share_inputs``, not copied) and are only overwritten after they were read."""

    def __init__(self, bundle: Bundle, precision: str = "fp32", threads: int | None = None, hint: str = "f32") -> None:
        from fusionrt.runtime.backends.openvino import compiled_from_onnx, import_openvino

        self.ov = import_openvino()
        self.model = bundle.model
        self.visual_request = compiled_from_onnx(bundle.graph_path(CAPTION_VISUAL, precision), hint=hint,
                                                 threads=threads).create_infer_request()
        step = compiled_from_onnx(bundle.graph_path(CAPTION_STEP, precision), hint=hint, threads=threads)
        self.requests = [step.create_infer_request() for _ in range(2)]
        self.max_text_len = int(self.model["max_text_len"])
        self.batch = 0
        self.past_length = 0

    def _tensor(self, array: np.ndarray) -> Any:
        return self.ov.Tensor(np.ascontiguousarray(array))

    def start(self, visual_feats: np.ndarray, visual_mask: np.ndarray) -> None:
        self.visual_request.infer({"visual_feats": np.ascontiguousarray(visual_feats, dtype=np.float32),
                                   "visual_mask": np.ascontiguousarray(visual_mask, dtype=bool)})
        # copies: the visual request's own output memory is reused by the next image's start
        self.visual_key = self._tensor(self.visual_request.get_tensor("visual_key").data.copy())
        self.visual_value = self._tensor(self.visual_request.get_tensor("visual_value").data.copy())
        self.visual_mask = self._tensor(visual_mask.astype(bool))
        self.batch = visual_feats.shape[0]
        empty = np.zeros(cache_shape(self.model, self.batch, 0), dtype=np.float32)
        self.past_key, self.past_value = self._tensor(empty), self._tensor(empty)
        self.past_mask = np.zeros((self.batch, 0), dtype=bool)
        self.past_length = 0
        self.turn = 0

    def step(self, ids: np.ndarray, new_mask: np.ndarray | None = None) -> np.ndarray:
        if self.past_length + ids.shape[1] > self.max_text_len:
            raise InputError("tokens", f"at most {self.max_text_len} text positions (the position table)",
                             f"{self.past_length} + {ids.shape[1]}")
        new_mask = np.ones(ids.shape, dtype=bool) if new_mask is None else np.ascontiguousarray(new_mask, dtype=bool)
        request = self.requests[self.turn]
        request.infer({"input_ids": np.ascontiguousarray(ids, dtype=np.int64), "new_mask": new_mask,
                       "past_mask": self.past_mask, "past_key": self.past_key, "past_value": self.past_value,
                       "visual_key": self.visual_key, "visual_value": self.visual_value,
                       "visual_mask": self.visual_mask}, share_inputs=True)
        self.past_key, self.past_value = request.get_tensor("present_key"), request.get_tensor("present_value")
        self.past_mask = np.concatenate([self.past_mask, new_mask], axis=1)
        self.past_length += ids.shape[1]
        self.turn = 1 - self.turn
        return request.get_tensor("logits").data.copy()

    def select(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        self.past_key = self._tensor(self.past_key.data[:, rows])
        self.past_value = self._tensor(self.past_value.data[:, rows])
        self.visual_key = self._tensor(self.visual_key.data[:, rows])
        self.visual_value = self._tensor(self.visual_value.data[:, rows])
        self.visual_mask = self._tensor(self.visual_mask.data[rows])
        self.past_mask = self.past_mask[rows]
        self.batch = len(rows)


class TorchStepper:
    """The PyTorch decoder with its own KV cache (the reference). ``decoder``: a CaptionDecoder."""

    def __init__(self, decoder: Any) -> None:
        import torch

        self.torch = torch
        self.decoder = decoder.eval()
        self.max_text_len = decoder.config.max_text_len
        self.batch = 0
        self.past_length = 0

    def start(self, visual_feats: np.ndarray, visual_mask: np.ndarray) -> None:
        t = self.torch
        with t.inference_mode():
            self.visual_mask = t.from_numpy(np.ascontiguousarray(visual_mask, dtype=bool))
            self.visual_key, self.visual_value = self.decoder.visual_cache(
                t.from_numpy(np.ascontiguousarray(visual_feats, dtype=np.float32)), self.visual_mask)
            self.batch = visual_feats.shape[0]
            self.past_key = self.past_value = self.decoder.empty_past(self.batch)
        self.text_mask = t.zeros((self.batch, 0), dtype=t.bool)
        self.past_length = 0

    def step(self, ids: np.ndarray, new_mask: np.ndarray | None = None) -> np.ndarray:
        t = self.torch
        new = t.from_numpy(np.ascontiguousarray(ids, dtype=np.int64))
        mask = t.ones(new.shape, dtype=t.bool) if new_mask is None else t.from_numpy(np.asarray(new_mask, bool))
        self.text_mask = t.cat([self.text_mask, mask], dim=1)
        with t.inference_mode():
            logits, self.past_key, self.past_value = self.decoder.step(
                new, self.text_mask, self.past_key, self.past_value, self.visual_key, self.visual_value,
                self.visual_mask)
        self.past_length += new.shape[1]
        return logits.numpy()

    def select(self, rows: np.ndarray) -> None:
        index = self.torch.from_numpy(np.asarray(rows, dtype=np.int64))
        self.past_key, self.past_value = self.past_key[:, index], self.past_value[:, index]
        self.visual_key, self.visual_value = self.visual_key[:, index], self.visual_value[:, index]
        self.visual_mask, self.text_mask = self.visual_mask[index], self.text_mask[index]
        self.batch = len(rows)
