"""The pipeline's stages for a match bundle (checkpoint task "match"), called by :mod:`fusionrt.pipeline.run`.

Export (in run.py) writes the four match graphs (:func:`fusionrt.export.match.export_match_checkpoint`);
calibrate, fp16 and int8 run the shared calibration API, which dispatches on the bundle's task to real matching
pairs and to the retrieval budgets (:mod:`fusionrt.calibration.match`, :class:`fusionrt.parity.match.MatchEvaluator`);
parity is ITM parity against PyTorch (:func:`fusionrt.parity.match.match_parity`) on one held-out database shared
with the budgets, so the PyTorch reference runs once per pipeline run. Engines, bench and report are shared.

Functions take the pipeline's run object (``fusionrt.pipeline.run._Run``) without importing it (no import loop).
"""

from __future__ import annotations

import json
import time
from typing import Any

from fusionrt.bundle.source import checkpoint_task
from fusionrt.export.match import MATCH_TASK
from fusionrt.io import atomic_write_json, json_safe
from fusionrt.parity.match import MatchEvaluator, MatchHeldout, match_budget, match_parity

MATCH_PARITY_FILE = "match_parity.json"



def is_match(run: Any) -> bool:
    """Whether the run's source is a matching checkpoint."""
    return not run.custom and checkpoint_task(run.checkpoint) == MATCH_TASK


def key_parts(run: Any) -> dict[str, Any]:
    """What the quantization and parity stages of a match run also depend on: the database and the budgets."""
    config = run.config
    return {"match": {"scenes": config.match_scenes, "queries": config.match_queries, "rerank": config.match_rerank,
                      "budgets": {p: match_budget(p).to_dict() for p in ("fp32", "fp16", "int8", "int8-cpu")}}}


def heldout(run: Any) -> MatchHeldout:
    """The run's one held-out database, its reference the run's memoized fp32 PyTorch fusion runner."""
    if getattr(run, "_match_heldout", None) is None:
        config = run.config
        run._match_heldout = MatchHeldout(run.bundle(), config.match_scenes, config.match_queries,
                                          config.match_rerank, run.progress, run.reference_runners()["fusion"])
    return run._match_heldout


def evaluator(run: Any) -> MatchEvaluator:
    return MatchEvaluator(run.bundle(), heldout=heldout(run))


def parity_stage(run: Any) -> tuple[dict[str, Any], list[str]]:
    """ITM parity of every requested graph on every backend; the reports go to ``match_parity.json``."""
    bundle = run.bundle()
    reports, summary = [], {"checks": []}
    for backend in run.config.backends:
        for precision in run.graphs():
            run.note(f"ITM parity {precision} on {backend} vs fp32 PyTorch")
            started = time.perf_counter()
            report = match_parity(bundle, precision, backend, heldout=heldout(run),
                                  reference=run.reference_runners()["fusion"], progress=run.progress)
            reports.append(json_safe(report))
            h = report["heldout"]
            table = (f"nDCG@10 {h['reference']['ndcg10_two_stage']:.4f} -> {h['candidate']['ndcg10_two_stage']:.4f}, "
                     f"ITM AUC {h['reference']['itm_roc_auc']:.4f} -> {h['candidate']['itm_roc_auc']:.4f}, "
                     f"top-10 agreement {h['agreement']:.4f}, logit cosine {h['cosine']['logits']:.6f}, grid worst "
                     f"max abs {max(p['max_abs'] for p in report['grid']):.3g}")
            summary["checks"].append({
                "precision": precision, "backend": backend, "passed": report["passed"],
                "failures": report["failures"][:20], "gates": report["budget"],
                "gates_text": f"{table} (budget {json.dumps(report['budget'])})",
                "seconds": round(time.perf_counter() - started, 2),
                "table": table})
    atomic_write_json(run.stage_dir / MATCH_PARITY_FILE, reports)
    return summary, [MATCH_PARITY_FILE]
