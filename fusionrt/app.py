"""Answer questions about scene images: ``Answerer(...).ask(image, question) -> (answer, probability)``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fusionrt.data.detector import detect_regions
from fusionrt.data.images import load_image
from fusionrt.data.tokenizer import QuestionEncoder
from fusionrt.errors import NoObjectsError


class AnswerPipeline(Protocol):
    """What the Answerer needs from a backend: the two graphs and the vocabularies."""

    questions: QuestionEncoder
    answers: list[str]
    max_visual_len: int

    def encode_regions(self, crops: np.ndarray, geometry: np.ndarray) -> np.ndarray: ...

    def fuse(self, input_ids: np.ndarray, text_mask: np.ndarray, visual_feats: np.ndarray,
             visual_mask: np.ndarray) -> np.ndarray: ...


class TorchPipeline:
    """The PyTorch original, from a checkpoint directory or a loaded :class:`Checkpoint`."""

    def __init__(self, checkpoint: Any) -> None:
        import torch

        from fusionrt.model import Checkpoint, load_checkpoint

        self._torch = torch
        self.checkpoint = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
        self.questions = self.checkpoint.questions
        self.answers = self.checkpoint.answers
        self.max_visual_len = self.checkpoint.fusion.config.max_visual_len

    def encode_regions(self, crops: np.ndarray, geometry: np.ndarray) -> np.ndarray:
        with self._torch.no_grad():
            feats = self.checkpoint.region_encoder(self._torch.from_numpy(crops), self._torch.from_numpy(geometry))
        return feats.numpy()

    def fuse(self, input_ids: np.ndarray, text_mask: np.ndarray, visual_feats: np.ndarray,
             visual_mask: np.ndarray) -> np.ndarray:
        t = self._torch.from_numpy
        with self._torch.no_grad():
            _, logits = self.checkpoint.fusion(t(input_ids), t(text_mask), t(visual_feats), t(visual_mask))
        return logits.numpy()


class BundlePipeline:
    """An exported bundle run through :class:`fusionrt.runtime.Session` (onnxruntime by default: no torch).

    ``backend`` is any name of :data:`fusionrt.runtime.BACKENDS`; ``options`` go to the backend's runner.
    """

    def __init__(self, bundle: str | Path, backend: str = "onnxruntime", precision: str = "fp32",
                 **options: Any) -> None:
        from fusionrt.runtime import Bundle, Session

        opened = Bundle.open(bundle)  # verified once, shared by both sessions
        self.bundle = opened
        # A quantized bundle maps every precision of the region encoder to its fp32 file.
        self.region_encoder = Session(opened, backend, "region_encoder", precision, **options)
        self.fusion = Session(opened, backend, "fusion", precision, **options)
        self.max_visual_len = int(opened.model["max_visual_len"])
        self.questions = QuestionEncoder.from_file(opened.file("tokenizer.json"), int(opened.model["max_text_len"]))
        self.answers = json.loads(opened.file("answers.json").read_text())
        if not isinstance(self.answers, list) or len(self.answers) != int(opened.model["num_answers"]):
            from fusionrt.runtime import BundleError

            raise BundleError("answers.json", f"a list of {opened.model['num_answers']} answers",
                              f"{self.answers!r:.80}")

    def encode_regions(self, crops: np.ndarray, geometry: np.ndarray) -> np.ndarray:
        return self.region_encoder.run({"crops": crops, "geometry": geometry})["feats"]

    def fuse(self, input_ids: np.ndarray, text_mask: np.ndarray, visual_feats: np.ndarray,
             visual_mask: np.ndarray) -> np.ndarray:
        return self.fusion.run({"input_ids": input_ids, "text_mask": text_mask, "visual_feats": visual_feats,
                                "visual_mask": visual_mask})["logits"]


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


class Answerer:
    """Visual question answering on one image at a time.

    ``model_or_bundle``: a bundle directory (one holding ``manifest.json``, written by
    ``fusionrt export``), a checkpoint directory (default: the shipped ``small`` model) or a loaded
    :class:`fusionrt.model.Checkpoint`. A bundle runs on ``backend`` (``"onnxruntime"`` by default,
    which does not import torch) at ``precision`` (``"fp32"``, or ``"fp16"`` / ``"int8"`` / ``"int8-cpu"``
    once ``fusionrt quantize`` added them); a checkpoint runs on PyTorch at fp32.
    """

    def __init__(self, model_or_bundle: Any = None, backend: str = "onnxruntime", precision: str = "fp32") -> None:
        from fusionrt.runtime.bundle import is_bundle

        if model_or_bundle is None:
            from fusionrt.model.checkpoint import SHIPPED_CHECKPOINT

            model_or_bundle = SHIPPED_CHECKPOINT
        if isinstance(model_or_bundle, str | Path) and is_bundle(model_or_bundle):
            self.pipeline: AnswerPipeline = BundlePipeline(model_or_bundle, backend, precision)
        else:
            if precision != "fp32":
                from fusionrt.errors import InputError

                raise InputError("precision", "fp32 for a checkpoint (other precisions need a bundle)",
                                 repr(precision))
            checkpoint = Path(model_or_bundle) if isinstance(model_or_bundle, str) else model_or_bundle
            self.pipeline = TorchPipeline(checkpoint)

    def probabilities(self, image: str | Path | np.ndarray, question: str) -> dict[str, float]:
        """Probability of every answer."""
        pixels = load_image(image)
        input_ids = self.pipeline.questions.encode(question)[None]
        regions = detect_regions(pixels, max_regions=self.pipeline.max_visual_len)
        if len(regions) == 0:
            raise NoObjectsError("image", "at least one object on the background", "no object detected")
        feats = self.pipeline.encode_regions(regions.crops_float(), regions.geometry)
        logits = self.pipeline.fuse(
            input_ids, np.ones_like(input_ids, dtype=bool), feats[None], np.ones((1, len(regions)), dtype=bool)
        )
        probs = _softmax(logits.astype(np.float64))[0]
        return dict(zip(self.pipeline.answers, probs.tolist(), strict=True))

    def ask(self, image: str | Path | np.ndarray, question: str) -> tuple[str, float]:
        """The most probable answer and its probability."""
        probs = self.probabilities(image, question)
        answer = max(probs, key=probs.__getitem__)
        return answer, probs[answer]
