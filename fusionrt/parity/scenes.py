"""Parity on real held-out scenes: rendered, detected and tokenized like the Answerer does it.

Each side runs its own region encoder and its own fusion graph, so region-encoder error propagates
into the fusion outputs as it would in deployment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fusionrt.bundle.manifest import Bundle
from fusionrt.data.dataset import QASet, build_qa_set
from fusionrt.data.tokenizer import QuestionEncoder
from fusionrt.data.world import split_seeds
from fusionrt.parity.compare import MetricAccumulator, Runs, Tolerance
from fusionrt.progress import SILENT, Progress
from fusionrt.runtime.session import Session


@dataclass
class SceneResult:
    """Output metrics, argmax agreement and each side's accuracy over real held-out questions (or a user's
    held-out feeds: ``label`` says which; ``agreement`` is None without a logits-like output, ``accuracy``
    None without labels)."""

    scenes: int
    questions: int
    metrics: dict[str, dict[str, Any]]
    agreement: float | None
    accuracy: dict[str, float] | None
    label: str = "scenes"

    def failures(self, tolerance: Tolerance) -> list[str]:
        out = tolerance.output_failures("scenes", self.metrics)
        if self.agreement is not None and self.agreement < tolerance.min_agreement:
            out.append(f"scenes: argmax agreement {self.agreement:.4f} < {tolerance.min_agreement:g}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"scenes": self.scenes, "questions": self.questions, "metrics": self.metrics,
                "argmax_agreement": self.agreement, "accuracy": self.accuracy, "on": self.label}


def heldout_questions(bundle: Bundle, scenes: int, start: int = 0, progress: Progress = SILENT) -> QASet:
    """Questions on held-out scenes ``start .. start+scenes``, encoded with the bundle's tokenizer."""
    questions = QuestionEncoder.from_file(bundle.file("tokenizer.json"), int(bundle.model["max_text_len"]))
    return build_qa_set(split_seeds("heldout", scenes, start=start), questions,
                        max_regions=int(bundle.model["max_visual_len"]), progress=progress,
                        description="held-out scenes")


def pad_regions(feats: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scatter the concatenated region features of several scenes into ``[S,M,Dv]`` and a ``[S,M]`` mask."""
    width = max(1, int(counts.max(initial=0)))
    rows = np.repeat(np.arange(len(counts)), counts)
    cols = np.concatenate([np.arange(c) for c in counts]) if len(counts) else np.zeros(0, dtype=np.int64)
    visual = np.zeros((len(counts), width, feats.shape[1]), dtype=np.float32)
    visual[rows, cols] = feats
    mask = np.zeros((len(counts), width), dtype=bool)
    mask[rows, cols] = True
    return visual, mask


def encode_scene_regions(bundle: Bundle, qa: QASet, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Every region of ``qa`` through the bundle's region-encoder graph (onnxruntime), padded per scene
    to ``visual_feats`` [S,M,Dv] and ``visual_mask`` [S,M]."""
    chunk = min(chunk, bundle.graph("region_encoder").max_batch or chunk)  # never past the declared max N
    with Session(bundle, "onnxruntime", "region_encoder") as encoder:
        feats = np.concatenate([
            encoder.run({"crops": qa.crops[a:a + chunk].astype(np.float32) / np.float32(255.0),
                         "geometry": qa.geometry[a:a + chunk]})["feats"]
            for a in range(0, len(qa.crops), chunk)])
    return pad_regions(feats, np.diff(qa.region_offsets))


def question_batches(bundle: Bundle, qa: QASet, visual: np.ndarray, visual_mask: np.ndarray,
                     batch: int = 64) -> list[dict[str, np.ndarray]]:
    """Fusion feeds for every question of ``qa`` in order, ``batch`` at a time (never past the graph's max B),
    each cut to its longest question; ``visual``/``visual_mask`` from :func:`encode_scene_regions`."""
    batch = min(batch, bundle.graph("fusion").max_batch or batch)
    out = []
    for start in range(0, len(qa), batch):
        idx = np.arange(start, min(start + batch, len(qa)))
        length = max(1, int(qa.text_mask[idx].sum(axis=1).max()))
        scene = qa.scene_index[idx]
        out.append({"input_ids": np.ascontiguousarray(qa.input_ids[idx, :length]),
                    "text_mask": np.ascontiguousarray(qa.text_mask[idx, :length]),
                    "visual_feats": visual[scene], "visual_mask": visual_mask[scene]})
    return out


def _side(runners: Mapping[str, Runs], qa: QASet, idx: np.ndarray, visual_dim: int) -> dict[str, np.ndarray]:
    scenes, scene_of_question = np.unique(qa.scene_index[idx], return_inverse=True)
    starts, stops = qa.region_offsets[scenes], qa.region_offsets[scenes + 1]
    regions = np.concatenate([np.arange(a, b) for a, b in zip(starts, stops, strict=True)])
    if len(regions):
        feats = runners["region_encoder"].run({
            "crops": qa.crops[regions].astype(np.float32) / np.float32(255.0), "geometry": qa.geometry[regions],
        })["feats"]
    else:
        feats = np.zeros((0, visual_dim), dtype=np.float32)
    visual, visual_mask = pad_regions(feats, stops - starts)
    text_mask = qa.text_mask[idx]
    length = max(1, int(text_mask.sum(axis=1).max()))
    outputs = runners["fusion"].run({
        "input_ids": np.ascontiguousarray(qa.input_ids[idx, :length]),
        "text_mask": np.ascontiguousarray(text_mask[:, :length]),
        "visual_feats": visual[scene_of_question], "visual_mask": visual_mask[scene_of_question],
    })
    return {"feats": feats, **outputs}


def compare_scenes(reference: Mapping[str, Runs], candidate: Mapping[str, Runs], qa: QASet, visual_dim: int,
                   batch_size: int = 64, progress: Progress = SILENT) -> SceneResult:
    """Compare both sides (each ``{"region_encoder": ..., "fusion": ...}``) on every question of ``qa``."""
    accumulators: dict[str, MetricAccumulator] = {}
    agree = correct_ref = correct_cand = 0
    with progress.phase("scenes", total=len(qa), unit="question") as bar:
        for start in range(0, len(qa), batch_size):
            idx = np.arange(start, min(start + batch_size, len(qa)))
            ref, cand = _side(reference, qa, idx, visual_dim), _side(candidate, qa, idx, visual_dim)
            for name, value in ref.items():
                accumulators.setdefault(name, MetricAccumulator()).add(value, cand[name])
            ref_pred, cand_pred = ref["logits"].argmax(axis=1), cand["logits"].argmax(axis=1)
            answers = qa.answer_index[idx]
            agree += int((ref_pred == cand_pred).sum())
            correct_ref += int((ref_pred == answers).sum())
            correct_cand += int((cand_pred == answers).sum())
            bar.update(len(idx))
    total = max(1, len(qa))
    return SceneResult(
        scenes=len(qa.region_offsets) - 1, questions=len(qa),
        metrics={name: acc.result() for name, acc in accumulators.items()},
        agreement=agree / total,
        accuracy={"reference": correct_ref / total, "candidate": correct_cand / total},
    )
