"""Batch answering without torch: PNG bytes + question -> model feeds -> answer, for the ``answer`` model.

The per-request steps (decode, detect, tokenize) are the Answerer's (``fusionrt.app``); here they run
for many requests at once, so that the region encoder and the fusion model each see one batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fusionrt.app import AnswerPipeline
from fusionrt.data.detector import detect_regions
from fusionrt.data.images import EXPECTED, decode_image, load_image
from fusionrt.data.tokenizer import PAD_ID, QuestionEncoder
from fusionrt.errors import ImageError, NoObjectsError, QuestionError


def image_from_bytes(data: bytes, name: str = "image") -> np.ndarray:
    """Decode an encoded image (PNG, or anything Pillow reads) into the checked HxWx3 uint8 array."""
    if not isinstance(data, bytes | bytearray):
        raise ImageError(name, f"{EXPECTED} as encoded bytes (PNG)", type(data).__name__)
    if not data:
        raise ImageError(name, f"{EXPECTED} as encoded bytes (PNG)", "0 bytes")
    return load_image(decode_image(bytes(data), name))


def question_from_bytes(data: bytes, name: str = "question") -> str:
    try:
        return bytes(data).decode("utf-8")
    except (UnicodeDecodeError, TypeError) as exc:
        raise QuestionError(name, "a UTF-8 string", f"{len(data)} bytes that are not UTF-8") from exc


@dataclass(frozen=True)
class Prepared:
    """One question about one image, ready for the models: token ids, region crops (float) and geometry."""

    input_ids: np.ndarray
    crops: np.ndarray
    geometry: np.ndarray


def prepare(pixels: np.ndarray, question: str, questions: QuestionEncoder, max_visual_len: int) -> Prepared:
    """The Answerer's pre-processing of one request; raises the same typed errors."""
    input_ids = questions.encode(question)
    regions = detect_regions(pixels, max_regions=max_visual_len)
    if len(regions) == 0:
        raise NoObjectsError("image", "at least one object on the background", "no object detected")
    return Prepared(input_ids, regions.crops_float(), regions.geometry)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def fusion_feed(input_ids: Sequence[np.ndarray], feats: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Pad per-question token ids [T_i] and region features [M_i, D] into one fusion batch with masks."""
    rows, t_max, m_max = len(input_ids), max(len(ids) for ids in input_ids), max(len(f) for f in feats)
    ids = np.full((rows, t_max), PAD_ID, dtype=np.int64)
    text_mask = np.zeros((rows, t_max), dtype=bool)
    visual = np.zeros((rows, m_max, feats[0].shape[1]), dtype=np.float32)
    visual_mask = np.zeros((rows, m_max), dtype=bool)
    for row, (tokens, feat) in enumerate(zip(input_ids, feats, strict=True)):
        ids[row, : len(tokens)], text_mask[row, : len(tokens)] = tokens, True
        visual[row, : len(feat)], visual_mask[row, : len(feat)] = feat, True
    return {"input_ids": ids, "text_mask": text_mask, "visual_feats": visual, "visual_mask": visual_mask}


def answer_logits(pipeline: AnswerPipeline, prepared: Sequence[Prepared], max_batch: int) -> np.ndarray:
    """Logits [len(prepared), answers]: all crops through the region encoder at once, then the fusion
    model in batches of at most ``max_batch`` questions."""
    counts = [len(p.crops) for p in prepared]
    feats = pipeline.encode_regions(np.concatenate([p.crops for p in prepared]),
                                    np.concatenate([p.geometry for p in prepared]))
    per_row = np.split(feats, np.cumsum(counts)[:-1])
    out = []
    for start in range(0, len(prepared), max_batch):
        chunk = slice(start, start + max_batch)
        feed = fusion_feed([p.input_ids for p in prepared[chunk]], per_row[chunk])
        out.append(pipeline.fuse(feed["input_ids"], feed["text_mask"], feed["visual_feats"], feed["visual_mask"]))
    return np.concatenate(out)
