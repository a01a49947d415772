"""The ``caption`` model of a caption bundle's Triton repository: PNG bytes in, caption text out.

The whole decode loop runs inside the model's Python-backend stub, on the torch-free runtime
(:class:`fusionrt.caption.captioner.Captioner` on ONNX Runtime): the keys/values stay OrtValues between
steps. Why not one Triton call per token: the cache would cross the process boundary at every step (an
[L,B,H,P,D] tensor out and back in), and the per-call overhead of a Triton hop is larger than a step of
this model. Requests batched by Triton are grouped by (beam, max_tokens) and each group is generated as
one batch (the Captioner's batching, rows that end early are dropped from the batch).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from fusionrt.caption.captioner import Captioner
from fusionrt.errors import InputError
from fusionrt.serve.answering import image_from_bytes
from fusionrt.serve.python_models import _BundleModel

BEAM, MAX_TOKENS = "beam", "max_tokens"


def optional_ints(pb: Any, request: Any, name: str, rows: int, default: int) -> list[int]:
    """One integer per row from an optional INT32 input [rows, 1] (absent: ``default`` for every row)."""
    tensor = pb.get_input_tensor_by_name(request, name)
    if tensor is None:
        return [default] * rows
    values = tensor.as_numpy().reshape(-1)
    if len(values) != rows:
        raise InputError(name, f"one value per image ({rows})", f"{len(values)} values")
    return [int(v) for v in values]


def check_range(name: str, value: int, high: int) -> int:
    if not 1 <= value <= high:
        raise InputError(name, f"an integer in [1, {high}]", str(value))
    return value


class CaptionModel(_BundleModel):
    """Inputs ``image`` (BYTES, PNG), optional ``beam`` (INT32, default 1: greedy) and ``max_tokens`` (INT32,
    default: the bundle's limit); output ``caption`` (BYTES). Parameter ``precision``: the decoder graphs'."""

    def load(self) -> None:
        self.captioner = Captioner(self.bundle.path, precision=self.parameters.get("precision", "fp32"))
        # A beam of k keeps k rows per image in the step graph's batch: at most its batch limit.
        self.max_beam = self.captioner.max_batch
        self.max_tokens = self.captioner.max_new_tokens

    def execute_batch(self, requests: list[Any]) -> list[Any]:
        pb = self.pb
        images, counts = [], []
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for request in requests:
            encoded = pb.get_input_tensor_by_name(request, "image").as_numpy().reshape(-1)
            beams = optional_ints(pb, request, BEAM, len(encoded), 1)
            limits = optional_ints(pb, request, MAX_TOKENS, len(encoded), self.max_tokens)
            for data, beam, limit in zip(encoded, beams, limits, strict=True):
                key = (check_range(BEAM, beam, self.max_beam), check_range(MAX_TOKENS, limit, self.max_tokens))
                groups[key].append(len(images))
                images.append(image_from_bytes(data))
            counts.append(len(encoded))
        captions: list[str] = [""] * len(images)
        for (beam, limit), rows in groups.items():
            for row, text in zip(rows, self.captioner.caption_many([images[r] for r in rows], beam, limit),
                                 strict=True):
                captions[row] = text
        out = np.array([c.encode() for c in captions], dtype=np.object_)
        responses, start = [], 0
        for count in counts:
            responses.append(pb.InferenceResponse(output_tensors=[
                pb.Tensor("caption", out[start:start + count].reshape(count, 1))]))
            start += count
        return responses

    def finalize(self) -> None:
        self.captioner = None  # its onnxruntime sessions have no close(): dropping them frees them
