"""Answer questions about scene images: ``Answerer(...).ask(image, question) -> (answer, probability)``.

By default the shipped model runs through its exported bundle (``fusionrt/assets/small-bundle``) on ONNX
Runtime, without importing torch; a checkpoint directory selects the PyTorch original explicitly.
``ask_many`` answers many (image, question) pairs in batched calls.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fusionrt.bundle.manifest import is_bundle
from fusionrt.data.batch import detect_many
from fusionrt.data.detector import detect_regions
from fusionrt.data.images import load_image
from fusionrt.data.tokenizer import QuestionEncoder
from fusionrt.errors import InputError, NoObjectsError
from fusionrt.runtime import Bundle, BundleError, Session

# The shipped checkpoint exported, verified and packaged (scripts/make_small_bundle.py writes it): the
# default model of the Answerer. Its manifest records the sha256 of every checkpoint file it came from.
SHIPPED_BUNDLE = Path(__file__).resolve().parent / "assets" / "small-bundle"
# Largest fusion batch ask_many sends in one call (the exported graphs allow up to 64).
MAX_BATCH = 64
Image = str | Path | np.ndarray


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
        opened = Bundle.open(bundle)  # verified once, shared by both sessions
        self.bundle = opened
        # A quantized bundle maps every precision of the region encoder to its fp32 file.
        self.region_encoder = Session(opened, backend, "region_encoder", precision, **options)
        self.fusion = Session(opened, backend, "fusion", precision, **options)
        self.max_visual_len = int(opened.model["max_visual_len"])
        self.questions = QuestionEncoder.from_file(opened.file("tokenizer.json"), int(opened.model["max_text_len"]))
        self.answers = json.loads(opened.file("answers.json").read_text())
        if not isinstance(self.answers, list) or len(self.answers) != int(opened.model["num_answers"]):
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
    """Visual question answering: ``ask`` one question, ``ask_many`` a batch of (image, question) pairs.

    ``model_or_bundle``: ``None`` (default) for the shipped model through its packaged bundle on ONNX
    Runtime (no torch import), a bundle directory (one holding ``manifest.json``, written by
    ``fusionrt export``), a checkpoint directory or a loaded :class:`fusionrt.model.Checkpoint`
    (both run the PyTorch original). A bundle runs on ``backend`` (``"onnxruntime"`` by default,
    which does not import torch) at ``precision`` (``"fp32"``, or ``"fp16"`` / ``"int8"`` / ``"int8-cpu"``
    once ``fusionrt quantize`` added them); a checkpoint runs on PyTorch at fp32.
    """

    def __init__(self, model_or_bundle: Any = None, backend: str = "onnxruntime", precision: str = "fp32") -> None:
        if model_or_bundle is None:
            model_or_bundle = SHIPPED_BUNDLE
        if isinstance(model_or_bundle, str | Path) and is_bundle(model_or_bundle):
            self.pipeline: AnswerPipeline = BundlePipeline(model_or_bundle, backend, precision)
        else:
            if precision != "fp32":
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

    def probabilities_many(self, pairs: Sequence[tuple[Image, str]],
                           batch_size: int = MAX_BATCH) -> list[dict[str, float]]:
        """Probability of every answer for each (image, question) pair, in order.

        Each distinct image (the same path, or the same array object) is detected and its regions
        encoded once, all images in one region-encoder call; questions then go to the fusion graph in
        batches of ``batch_size`` pairs, text and regions padded to the longest in the batch.
        """
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or not 1 <= batch_size <= MAX_BATCH:
            raise InputError("batch_size", f"an integer in [1, {MAX_BATCH}]", repr(batch_size))
        if isinstance(pairs, str | bytes | Path | np.ndarray) or not isinstance(pairs, Iterable):
            raise InputError("pairs", "a sequence of (image, question) pairs", type(pairs).__name__)
        pairs = list(pairs)
        for index, pair in enumerate(pairs):
            if not isinstance(pair, tuple | list) or len(pair) != 2 or not isinstance(pair[1], str):
                got = f"{type(pair).__name__} {pair!r:.60}"
                raise InputError(f"pairs[{index}]", "an (image, question) pair: a path or array and a string", got)
        if not pairs:
            return []
        slots: dict[Any, int] = {}
        image_of_pair = []
        images = []
        for image, _ in pairs:
            key = str(Path(image).resolve()) if isinstance(image, str | Path) else id(image)
            if key not in slots:
                slots[key] = len(images)
                images.append(image)
            image_of_pair.append(slots[key])
        feats, counts = self._encode_images(images)
        encoded = [self.pipeline.questions.encode(question) for _, question in pairs]
        offsets = np.concatenate([[0], np.cumsum(counts)])
        out: list[dict[str, float]] = []
        for start in range(0, len(pairs), batch_size):
            rows = range(start, min(start + batch_size, len(pairs)))
            text_len = max(len(encoded[r]) for r in rows)
            visual_len = max(counts[image_of_pair[r]] for r in rows)
            input_ids = np.zeros((len(rows), text_len), dtype=np.int64)  # [PAD] is id 0
            text_mask = np.zeros((len(rows), text_len), dtype=bool)
            visual = np.zeros((len(rows), visual_len, feats.shape[1]), dtype=np.float32)
            visual_mask = np.zeros((len(rows), visual_len), dtype=bool)
            for i, r in enumerate(rows):
                ids, image = encoded[r], image_of_pair[r]
                input_ids[i, :len(ids)] = ids
                text_mask[i, :len(ids)] = True
                visual[i, :counts[image]] = feats[offsets[image]:offsets[image + 1]]
                visual_mask[i, :counts[image]] = True
            probs = _softmax(self.pipeline.fuse(input_ids, text_mask, visual, visual_mask).astype(np.float64))
            out.extend(dict(zip(self.pipeline.answers, row.tolist(), strict=True)) for row in probs)
        return out

    def ask_many(self, pairs: Sequence[tuple[Image, str]], batch_size: int = MAX_BATCH) -> list[tuple[str, float]]:
        """The most probable answer and its probability for each (image, question) pair, batched
        (see :meth:`probabilities_many`)."""
        answers = []
        for probs in self.probabilities_many(pairs, batch_size):
            answer = max(probs, key=probs.__getitem__)
            answers.append((answer, probs[answer]))
        return answers

    def _encode_images(self, images: list[Image]) -> tuple[np.ndarray, list[int]]:
        """Region features of every image, concatenated (one region-encoder call), and the count per image."""
        crops, geometry, counts = detect_many(images, self.pipeline.max_visual_len)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        # One call per MAX_BATCH images: the region encoder accepts up to MAX_BATCH x max_visual_len crops.
        chunks = [slice(offsets[a], offsets[min(a + MAX_BATCH, len(images))]) for a in range(0, len(images), MAX_BATCH)]
        feats = np.concatenate([self.pipeline.encode_regions(crops[c], geometry[c]) for c in chunks])
        return feats, counts
