"""Precision and parity of a match bundle's ITM re-rank head, measured in retrieval terms.

:class:`MatchHeldout` pre-processes the held-out matching database once (render, detect, the bundle's fp32
region encoder, image and text embeddings on ONNX Runtime), takes each query's first-stage candidates by
embedding cosine, and builds the ITM fusion batches a deployment runs: the top ``rerank`` candidates of every
query (two-stage nDCG@10), and the pairs ITM ROC-AUC is measured on (each query with its source scene,
with a hard-negative text one attribute away, and with an irrelevant scene). The reference (fp32 PyTorch)
runs on those batches once; every candidate graph is scored on the same rows.

Only the fusion graph changes with precision: the first stage (text and image embeddings) is shared by both
sides, so an nDCG difference is the re-rank's alone.

:class:`MatchEvaluator` offers the interface the quantizers use (``measure_path``, ``default_budget``,
``describe``, ``batches``); :func:`match_parity` is ``fusionrt parity`` on a match bundle (a shape grid plus
the held-out rows, gated by :data:`MATCH_BUDGETS`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from fusionrt.bundle.manifest import Bundle
from fusionrt.bundle.spec import FUSION
from fusionrt.data.matching import MatchDatabase, heldout_database
from fusionrt.data.tokenizer import QuestionEncoder
from fusionrt.data.world import generate_scene, render
from fusionrt.errors import InputError
from fusionrt.parity.compare import MetricAccumulator, Runs
from fusionrt.parity.grid import fusion_feed, low_mid_high
from fusionrt.progress import SILENT, Progress
from fusionrt.runtime.backends.onnxrt import session_from_onnx
from fusionrt.runtime.session import Session
from fusionrt.search.encode import ImageEncoder, pad_regions
from fusionrt.search.metrics import mean_ndcg, roc_auc

MATCH_TASK = "match"
# The held-out database of issue 20 (5,000 scenes, 500 queries) and ALBEF's re-rank depth.
DEFAULT_SCENES, DEFAULT_QUERIES, DEFAULT_RERANK = 5000, 500, 128
AUC_BATCH = 128
TOP = 10

Feed = dict[str, np.ndarray]


@dataclass(frozen=True)
class MatchBudget:
    """Largest drops against fp32 PyTorch on the held-out database, in points (x100): two-stage nDCG@10 and ITM
    ROC-AUC; smallest cosine of the ITM logits over every held-out row; on the random shape grid, largest max
    abs logit error and smallest logit cosine (None: not gated)."""

    max_ndcg_drop_points: float
    max_auc_drop_points: float
    min_cosine: float
    grid_max_abs: float | None
    grid_min_cosine: float

    def to_dict(self) -> dict[str, float]:
        return {k: v for k, v in vars(self).items() if v is not None}


# nDCG: issue 20's budget (1 point). AUC: 0.5 point, from measurement (benchmarks/match_precision.py, RESULTS.md
# "Match precision"): on the 1,491 held-out pairs the bootstrap standard error of fp32's AUC is 0.13 points, so a
# drop past 0.5 (~4 standard errors) is damage rather than the luck of which pairs were drawn, while fp16, int8
# and int8-cpu moved it by at most 0.006 points. Grid gates: fp32 as export verification; the reduced precisions
# by cosine only (random feeds push int8 logits far from real data's, where the task gates hold).
MATCH_BUDGETS: dict[str, MatchBudget] = {
    "fp32": MatchBudget(0.1, 0.05, 0.99999, 1e-4, 0.99999),
    "fp16": MatchBudget(1.0, 0.5, 0.9995, None, 0.999),
    "bf16": MatchBudget(1.0, 0.5, 0.995, None, 0.99),
    "int8": MatchBudget(1.0, 0.5, 0.99, None, 0.95),
    "int8-cpu": MatchBudget(1.0, 0.5, 0.99, None, 0.95),
}


def match_budget(precision: str, **overrides: float | None) -> MatchBudget:
    """The precision's budget with ``overrides`` (a None override keeps the default)."""
    if precision not in MATCH_BUDGETS:
        raise InputError("precision", f"one of {sorted(MATCH_BUDGETS)}", repr(precision))
    return replace(MATCH_BUDGETS[precision], **{k: v for k, v in overrides.items() if v is not None})


def _scene_regions(bundle: Bundle, seeds: list[int], progress: Progress, chunk: int = 250) -> list[np.ndarray]:
    encoder = ImageEncoder(bundle)  # fp32 on ORT: the image side is precomputed at fp32 in every deployment
    try:
        out: list[np.ndarray] = []
        for start in progress.iterate(range(0, len(seeds), chunk), "held-out scenes", unit="chunk"):
            out += encoder.regions([render(generate_scene(s)) for s in seeds[start:start + chunk]])
        return out
    finally:
        encoder.close()


def _embeddings(bundle: Bundle, regions: list[np.ndarray], ids: np.ndarray, mask: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    encoder = ImageEncoder(bundle)
    try:
        images = encoder.embed(regions)
    finally:
        encoder.close()
    with Session(bundle, "onnxruntime", "text_embed", "fp32") as text:
        limit = text.dims["B"].max
        texts = np.concatenate([text.run({"input_ids": ids[i:i + limit], "text_mask": mask[i:i + limit]})
                                ["text_embedding"] for i in range(0, len(ids), limit)])
    return texts, images


class MatchHeldout:
    """The held-out database of a match bundle as ITM fusion batches, with the fp32 PyTorch reference on them.

    ``reference``: the fusion runner taken as reference (default ``Session(bundle, "torch", "fusion",
    **torch_options)``); it runs once, on first use of :attr:`reference_logits`."""

    def __init__(self, bundle: Bundle, scenes: int = DEFAULT_SCENES, queries: int = DEFAULT_QUERIES,
                 rerank: int = DEFAULT_RERANK, progress: Progress = SILENT, reference: Runs | None = None,
                 torch_options: Mapping[str, Any] | None = None, split: str = "heldout") -> None:
        if bundle.task != MATCH_TASK:
            raise InputError("bundle", "a bundle with task 'match'", f"task {bundle.task!r}")
        if scenes < 2 or queries < 1 or rerank < TOP:
            raise InputError("scenes/queries/rerank", f"scenes >= 2, queries >= 1, rerank >= {TOP}",
                             f"{scenes}/{queries}/{rerank}")
        self.bundle, self.scenes, self.rerank = bundle, scenes, min(rerank, scenes)
        self._reference, self._torch_options, self._progress = reference, dict(torch_options or {}), progress
        self._reference_logits: np.ndarray | None = None
        self.database: MatchDatabase = heldout_database(scenes, queries, split=split)
        encoder = QuestionEncoder.from_file(bundle.file("tokenizer.json"), int(bundle.model["max_text_len"]))
        texts = [q.text for q in self.database.queries]
        ids, mask = encoder.encode_batch(texts)
        self.regions = _scene_regions(bundle, self.database.seeds, progress)
        text_vectors, image_vectors = _embeddings(bundle, self.regions, ids, mask)
        self.first_stage = np.argsort(-(text_vectors @ image_vectors.T), axis=1, kind="stable")[:, : self.rerank]
        feature_dim = int(bundle.model["visual_dim"])
        self.batches: list[Feed] = []
        for q in range(len(texts)):  # one batch per query: its candidates, as the Searcher re-ranks them
            length = int(mask[q].sum())
            feats, visual_mask = pad_regions([self.regions[s] for s in self.first_stage[q]], feature_dim)
            rows = len(feats)
            self.batches.append({"input_ids": np.repeat(ids[q:q + 1, :length], rows, axis=0),
                                 "text_mask": np.ones((rows, length), dtype=bool),
                                 "visual_feats": feats, "visual_mask": visual_mask})
        self.rerank_rows = len(texts) * self.rerank
        # ITM ROC-AUC pairs: positives, then hard-negative texts on the same scene, then an irrelevant scene.
        rng = np.random.default_rng(1)
        pair_texts, pair_scenes = list(texts), list(self.database.source_scene)
        hard = [(n.text, s) for n, s in zip(self.database.hard_negatives, self.database.source_scene, strict=True)
                if n is not None]
        pair_texts += [t for t, _ in hard] + texts
        pair_scenes += [s for _, s in hard]
        pair_scenes += [int(rng.choice(np.nonzero(~row)[0])) if (~row).any() else 0
                        for row in self.database.relevance]
        self.positives, self.hard_negatives = len(texts), len(hard)
        pair_ids, pair_mask = encoder.encode_batch(pair_texts)
        for start in range(0, len(pair_texts), AUC_BATCH):
            chunk = slice(start, start + AUC_BATCH)
            width = max(1, int(pair_mask[chunk].sum(axis=1).max()))
            feats, visual_mask = pad_regions([self.regions[s] for s in pair_scenes[chunk]], feature_dim)
            self.batches.append({"input_ids": pair_ids[chunk, :width], "text_mask": pair_mask[chunk, :width],
                                 "visual_feats": feats, "visual_mask": visual_mask})

    @property
    def rows(self) -> int:
        return sum(int(feed["input_ids"].shape[0]) for feed in self.batches)

    def describe(self) -> dict[str, Any]:
        return {"database_scenes": self.scenes, "queries": len(self.database.queries), "rerank": self.rerank,
                "auc_pairs": self.positives * 2 + self.hard_negatives, "itm_rows": self.rows}

    @property
    def reference_logits(self) -> np.ndarray:
        """fp32 PyTorch ITM logits [rows] over every batch, computed on first use."""
        if self._reference_logits is None:
            self._progress.note(f"fp32 PyTorch reference on {self.rows} held-out ITM rows")
            if self._reference is not None:
                self._reference_logits = self.logits(self._reference.run)
            else:
                with Session(self.bundle, "torch", FUSION, **self._torch_options) as reference:
                    self._reference_logits = self.logits(reference.run)
        return self._reference_logits

    def logits(self, run: Callable[[Feed], Mapping[str, np.ndarray]]) -> np.ndarray:
        """ITM logits [rows] of a fusion runner over every batch."""
        return np.concatenate([np.asarray(run(feed)["logits"])[:, 0] for feed in self.batches]).astype(np.float64)

    def scores(self, logits: np.ndarray) -> dict[str, Any]:
        """Two-stage nDCG@10 and ITM ROC-AUC (all negatives and hard negatives alone) of ``logits`` [rows], and
        each query's re-ranked top 10 (scene ids)."""
        rerank = logits[: self.rerank_rows].reshape(-1, self.rerank)
        rankings = [self.first_stage[q][np.argsort(-row, kind="stable")] for q, row in enumerate(rerank)]
        pairs = logits[self.rerank_rows:]
        positives, negatives = pairs[: self.positives], pairs[self.positives:]
        finite = bool(np.isfinite(logits).all())
        return {"ndcg10_two_stage": mean_ndcg(rankings, self.database.relevance, TOP) if finite else 0.0,
                "itm_roc_auc": roc_auc(positives, negatives) if finite else 0.0,
                "itm_roc_auc_hard_negatives": roc_auc(positives, negatives[: self.hard_negatives])
                if finite and self.hard_negatives else None,
                "top10": np.stack([r[:TOP] for r in rankings])}


@dataclass
class MatchMeasurement:
    """A candidate fusion graph against the reference on the held-out rows (scores in [0, 1])."""

    rows: int
    reference: dict[str, float]
    candidate: dict[str, float]
    top10_agreement: float  # mean overlap of the re-ranked top 10 with the reference's
    logits_mean_abs: float
    logits_max_abs: float
    cosine: dict[str, float]

    # The names the sensitivity search orders nodes by (fusionrt.calibration.sensitivity).
    @property
    def accuracy(self) -> float:
        return self.candidate["ndcg10_two_stage"]

    @property
    def agreement(self) -> float:
        return self.top10_agreement

    @property
    def min_cosine(self) -> float:
        return min(self.cosine.values(), default=1.0)

    def drop_points(self, metric: str) -> float:
        return 100.0 * (self.reference[metric] - self.candidate[metric])

    def failures(self, budget: MatchBudget) -> list[str]:
        out = []
        for metric, limit in (("ndcg10_two_stage", budget.max_ndcg_drop_points),
                              ("itm_roc_auc", budget.max_auc_drop_points)):
            drop = self.drop_points(metric)
            if not (math.isfinite(drop) and drop <= limit):
                out.append(f"{metric} drop {drop:.3f} points > {limit:g}")
        if not (math.isfinite(self.min_cosine) and self.min_cosine >= budget.min_cosine):
            out.append(f"ITM logit cosine {self.min_cosine:.6f} < {budget.min_cosine:g}")
        return out

    def to_dict(self, budget: MatchBudget | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "questions": self.rows, "reference": dict(self.reference), "candidate": dict(self.candidate),
            "drop_points": {m: self.drop_points(m) for m in ("ndcg10_two_stage", "itm_roc_auc")},
            "agreement": self.top10_agreement, "logits_mean_abs": self.logits_mean_abs,
            "logits_max_abs": self.logits_max_abs, "cosine": dict(self.cosine)}
        out["text"] = self.text()
        if budget is not None:
            out["budget"] = budget.to_dict()
            out["failures"] = self.failures(budget)
            out["passed"] = not out["failures"]
        return out

    def text(self) -> str:
        """One line: each score of the reference and the candidate, agreement and cosine."""
        ref, cand = self.reference, self.candidate
        return (f"nDCG@10 {ref['ndcg10_two_stage']:.4f} -> {cand['ndcg10_two_stage']:.4f}, ITM AUC "
                f"{ref['itm_roc_auc']:.4f} -> {cand['itm_roc_auc']:.4f} (fp32 PyTorch -> graph), top-10 agreement "
                f"{self.top10_agreement:.4f}, logit cosine {self.cosine['logits']:.6f} on {self.rows} held-out ITM "
                "rows")


def _public(scores: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in scores.items() if k != "top10"}


class MatchEvaluator:
    """Two-stage nDCG@10, ITM ROC-AUC and logit agreement of a candidate fusion graph against fp32 PyTorch on a
    :class:`MatchHeldout` (built from ``bundle`` and the sizes unless ``heldout`` is given)."""

    def __init__(self, bundle: Bundle, scenes: int = DEFAULT_SCENES, queries: int = DEFAULT_QUERIES,
                 rerank: int = DEFAULT_RERANK, progress: Progress = SILENT, reference: Runs | None = None,
                 heldout: MatchHeldout | None = None, torch_options: Mapping[str, Any] | None = None) -> None:
        self.heldout = heldout or MatchHeldout(bundle, scenes, queries, rerank, progress, reference, torch_options)
        self.batches = self.heldout.batches
        self.reference_scores = self.heldout.scores(self.heldout.reference_logits)

    def default_budget(self, precision: str) -> MatchBudget:
        return match_budget(precision)

    def describe(self) -> dict[str, Any]:
        return self.heldout.describe()

    def measure_path(self, onnx_path: str | Path, threads: int | None = None) -> MatchMeasurement:
        """The fusion graph at ``onnx_path`` on onnxruntime (CPU)."""
        session = session_from_onnx(onnx_path, providers=["CPUExecutionProvider"], threads=threads)
        names = [o.name for o in session.get_outputs()]
        return self.measure(lambda feed: dict(zip(names, session.run(names, feed), strict=True)))

    def measure(self, run: Callable[[Feed], Mapping[str, np.ndarray]]) -> MatchMeasurement:
        reference = self.heldout.reference_logits
        logits = self.heldout.logits(run)
        scores = self.heldout.scores(logits)
        agreement = np.mean([len(set(a) & set(b)) / TOP for a, b in
                             zip(scores["top10"], self.reference_scores["top10"], strict=True)])
        accumulator = MetricAccumulator()
        accumulator.add(reference, logits)
        metrics = accumulator.result()
        error = np.abs(logits - reference)
        finite = bool(np.isfinite(error).all())  # NaN logits (a broken graph) must never look good
        return MatchMeasurement(rows=len(logits), reference=_public(self.reference_scores),
                                candidate=_public(scores), top10_agreement=float(agreement),
                                logits_mean_abs=float(error.mean()) if finite else float("inf"),
                                logits_max_abs=float(error.max()) if finite else float("inf"),
                                cosine={"logits": float(metrics["cosine"]) if finite else 0.0})


def grid_compare(bundle: Bundle, reference: Runs, candidate: Runs, seed: int = 0) -> list[dict[str, Any]]:
    """Logit max abs error and cosine per point of a (B, T, M) grid of random padded fusion feeds."""
    spec = bundle.graph(FUSION)
    dims = spec.dims
    rng = np.random.default_rng(seed)
    out = []
    for b in (1, min(7, dims["B"].max), min(64, dims["B"].max)):
        for t in low_mid_high(dims["T"].min, dims["T"].max):
            for m in low_mid_high(dims["M"].min, dims["M"].max):
                feed = fusion_feed(spec, b, t, m, rng)
                accumulator = MetricAccumulator()
                accumulator.add(reference.run(feed)["logits"], candidate.run(feed)["logits"])
                result = accumulator.result()
                out.append({"B": b, "T": t, "M": m, "max_abs": result["max_abs"], "cosine": result["cosine"],
                            "problem": result["problem"]})
    return out


def match_parity(bundle: Bundle, precision: str = "fp32", backend: str = "onnxruntime", *,
                 scenes: int = 1000, queries: int = 100, rerank: int = DEFAULT_RERANK, seed: int = 0,
                 budget: MatchBudget | None = None, torch_options: Mapping[str, Any] | None = None,
                 heldout: MatchHeldout | None = None, reference: Runs | None = None,
                 progress: Progress = SILENT) -> dict[str, Any]:
    """ITM parity of ``backend`` at ``precision`` against fp32 PyTorch: the shape grid, then the held-out database
    (``scenes`` scenes, ``queries`` queries, top ``rerank``; or ``heldout``): logit error and cosine, top-10
    agreement of the re-ranked lists, nDCG@10 and AUC of each side. ``passed`` is False when a gate of ``budget``
    (default: :data:`MATCH_BUDGETS` of the precision) broke."""
    budget = budget or match_budget(precision)
    own_reference = reference is None
    reference = reference or Session(bundle, "torch", FUSION, "fp32", **dict(torch_options or {}))
    try:
        with Session(bundle, backend, FUSION, precision) as candidate:
            progress.note(f"shape grid: {backend} {precision} vs fp32 PyTorch")
            grid = grid_compare(bundle, reference, candidate, seed)
            failures = [f"grid B={p['B']} T={p['T']} M={p['M']}: " + (p["problem"] or f"max abs {p['max_abs']:.3g}")
                        for p in grid if p["problem"] or (budget.grid_max_abs is not None
                                                          and not p["max_abs"] <= budget.grid_max_abs)]
            failures += [f"grid B={p['B']} T={p['T']} M={p['M']}: cosine {p['cosine']:.6f} < "
                         f"{budget.grid_min_cosine:g}" for p in grid
                         if not p["problem"] and not p["cosine"] >= budget.grid_min_cosine]
            heldout_report = None
            if heldout is not None or scenes:
                heldout = heldout or MatchHeldout(bundle, scenes, queries, rerank, progress, reference)
                measurement = MatchEvaluator(bundle, heldout=heldout).measure(candidate.run)
                heldout_report = {**heldout.describe(), **measurement.to_dict(budget)}
                failures += measurement.failures(budget)
    finally:
        if own_reference:
            reference.close()
    return {"task": MATCH_TASK, "backend": backend, "precision": precision, "reference": "torch fp32",
            "budget": budget.to_dict(), "grid": grid, "heldout": heldout_report, "failures": failures,
            "passed": not failures}


def format_match_parity(report: dict[str, Any]) -> str:
    """A few lines: grid worst, held-out scores of each side, verdict."""
    grid = report["grid"]
    lines = [f"match parity: {report['backend']} {report['precision']} vs fp32 PyTorch",
             f"  grid ({len(grid)} points): worst max abs {max(p['max_abs'] for p in grid):.3g}, "
             f"worst cosine {min(p['cosine'] for p in grid):.6f}"]
    h = report["heldout"]
    if h:
        ref, cand = h["reference"], h["candidate"]
        lines.append(f"  held-out ({h['database_scenes']} scenes, {h['queries']} queries, top {h['rerank']}): "
                     f"nDCG@10 {ref['ndcg10_two_stage']:.4f} -> {cand['ndcg10_two_stage']:.4f}, "
                     f"ITM AUC {ref['itm_roc_auc']:.4f} -> {cand['itm_roc_auc']:.4f}, "
                     f"top-10 agreement {h['agreement']:.4f}, logit max abs {h['logits_max_abs']:.3g}, "
                     f"cosine {h['cosine']['logits']:.6f}")
    lines.append("  PASSED" if report["passed"] else "  FAILED: " + "; ".join(report["failures"][:5]))
    return "\n".join(lines)
