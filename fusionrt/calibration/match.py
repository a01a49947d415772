"""Calibration of a match bundle's ITM fusion graph: real pairs, in the shapes a re-rank runs.

Samples come from the ``calibration`` seed split (disjoint from training and the held-out database) through the
deployed pre-processing (render, detection, the bundle's fp32 region encoder, tokenizer): for each query drawn
from a calibration scene, the pair with that scene (relevant), the pair of its hard negative (one attribute
changed) with that scene, and the pairs with the scenes the dual encoder ranks highest among the calibration
scenes (what the re-rank sees most: similar, mostly irrelevant images). :meth:`MatchCalibrationSet.feeds`
yields them in batches of many sizes, each padded only to its own rows' longest text and region count, so the
ranges see batch, text length and region count vary as in deployment.

Only the fusion graph is quantized. The text and image embedding graphs are not: the image embedding is computed
once per image at index time (never on the query path) and the text embedding is one row per query, a fraction
of a millisecond against the re-rank's k rows (benchmarks/match_precision.py measures both), so reduced
precision there would cost first-stage recall for no latency a query sees.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import cycle
from pathlib import Path

import numpy as np

from fusionrt.bundle.manifest import Bundle
from fusionrt.bundle.spec import FUSION
from fusionrt.calibration.errors import CalibrationError
from fusionrt.calibration.samples import MIN_SAMPLES, CalibrationSet, load_set
from fusionrt.data.matching import heldout_database
from fusionrt.data.tokenizer import QuestionEncoder
from fusionrt.data.world import generate_scene, render
from fusionrt.progress import SILENT, Progress
from fusionrt.runtime.session import Session
from fusionrt.search.encode import ImageEncoder, pad_regions

MATCH_TASK = "match"
# Batch sizes the feeds cycle through: a single `fusionrt match`, small and large re-rank batches.
BATCH_SCHEDULE = (1, 4, 16, 2, 64, 8, 32, 128)
# Per query: its positive, its hard negative, and this many of its top first-stage scenes.
TOP_CANDIDATES = 6


class MatchCalibrationSet(CalibrationSet):
    """Matching pairs padded to common widths (rows shuffled); :meth:`feeds` batches them (see module doc)."""

    def feeds(self) -> Iterator[dict[str, np.ndarray]]:
        start, sizes = 0, cycle(BATCH_SCHEDULE)
        while start < len(self):
            rows = slice(start, start + next(sizes))
            text_len = max(1, int(self.text_mask[rows].sum(axis=1).max()))
            visual_len = max(1, int(self.visual_mask[rows].sum(axis=1).max()))
            yield {"input_ids": self.input_ids[rows, :text_len].copy(),
                   "text_mask": self.text_mask[rows, :text_len].copy(),
                   "visual_feats": self.visual_feats[rows, :visual_len].copy(),
                   "visual_mask": self.visual_mask[rows, :visual_len].copy()}
            start = rows.stop

    def shapes(self) -> list[list[int]]:
        """(B, T, M) of every feed: the shape variety calibration sees."""
        return [[int(f["input_ids"].shape[0]), int(f["input_ids"].shape[1]), int(f["visual_feats"].shape[1])]
                for f in self.feeds()]


def draw_match_pairs(bundle: Bundle, samples: int, seed: int = 0, progress: Progress = SILENT) -> MatchCalibrationSet:
    """``samples`` real (query, scene) pairs of calibration scenes (see module doc), rows shuffled."""
    if samples < MIN_SAMPLES:
        raise CalibrationError("samples", f"at least {MIN_SAMPLES}", str(samples))
    # At least the positive and TOP_CANDIDATES - 1 first-stage scenes per query (the source may rank among them).
    queries = -(-samples // TOP_CANDIDATES)
    database = heldout_database(max(64, 2 * queries), queries, split="calibration", seed=seed)
    encoder = QuestionEncoder.from_file(bundle.file("tokenizer.json"), int(bundle.model["max_text_len"]))
    images = ImageEncoder(bundle)
    try:
        progress.note(f"calibration pairs: {queries} queries over {len(database.seeds)} calibration scenes")
        regions = images.regions([render(generate_scene(s)) for s in database.seeds])
        image_vectors = images.embed(regions)
    finally:
        images.close()
    texts = [q.text for q in database.queries]
    ids, mask = encoder.encode_batch(texts)
    with Session(bundle, "onnxruntime", "text_embed", "fp32") as text_embed:
        text_vectors = np.concatenate([text_embed.run({"input_ids": ids[i:i + 64], "text_mask": mask[i:i + 64]})
                                       ["text_embedding"] for i in range(0, len(ids), 64)])
    ranked = np.argsort(-(text_vectors @ image_vectors.T), axis=1, kind="stable")
    pairs: list[tuple[str, int]] = []
    for q, query in enumerate(database.queries):
        source = int(database.source_scene[q])
        pairs.append((query.text, source))
        negative = database.hard_negatives[q]
        if negative is not None:
            pairs.append((negative.text, source))
        pairs += [(query.text, int(s)) for s in ranked[q][:TOP_CANDIDATES] if s != source]
    order = np.random.default_rng(seed).permutation(len(pairs))[:samples]
    pairs = [pairs[i] for i in order]
    pair_ids, pair_mask = encoder.encode_batch([t for t, _ in pairs])
    feats, visual_mask = pad_regions([regions[s] for _, s in pairs], int(bundle.model["visual_dim"]))
    return MatchCalibrationSet(pair_ids, pair_mask, feats, visual_mask,
                               source=f"match pairs of calibration scenes (seed {seed}): {len(texts)} queries, "
                                      f"positives, hard negatives, top-{TOP_CANDIDATES} first-stage scenes")


def load_match_calibration(bundle: Bundle, path: str | Path, min_samples: int = MIN_SAMPLES) -> MatchCalibrationSet:
    """A match bundle's saved calibration pairs, batched as :meth:`MatchCalibrationSet.feeds` does."""
    data = load_set(path, bundle.graph(FUSION), min_samples)
    return MatchCalibrationSet(**data.arrays(), source=data.source)
