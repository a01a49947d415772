"""Precision of the match bundle's ITM re-rank on the full held-out database: two-stage nDCG@10 and ITM ROC-AUC of
fp32 PyTorch, fp32 / fp16 / int8 / int8-cpu ONNX graphs (ORT CPU), their latency on a 128-row re-rank batch, the
bootstrap standard error of the AUC (what the AUC budget is chosen from), and the embedding graphs' share of a
query's model time (whether quantizing text_embed / image_embed could pay).

Usage: python benchmarks/match_precision.py [--scenes 5000] [--queries 500] [--rerank 128] [--bundle-dir DIR]
       [--json OUT] [--plot OUT.png]

The bundle is the shipped match bundle copied to ``--bundle-dir`` and taken through ``calibrate`` (256 real pairs)
and ``quantize_fp16`` / ``quantize_int8`` with the full database as their evaluator: the numbers below are the
ones the quantizers gated on. Latency: ORT CPU, one thread, each precision timed in one block of consecutive calls
with a pause between blocks.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

from fusionrt.bundle.manifest import Bundle
from fusionrt.calibration.api import calibrate, load_calibration, quantize_fp16, quantize_int8
from fusionrt.data.tokenizer import QuestionEncoder
from fusionrt.io import atomic_write_json, json_safe
from fusionrt.parity.match import MATCH_BUDGETS, MatchEvaluator, MatchHeldout
from fusionrt.progress import Progress
from fusionrt.runtime.session import Session
from fusionrt.search.metrics import roc_auc
from fusionrt.search.searcher import SHIPPED_MATCH_BUNDLE

PRECISIONS = ("fp16", "int8", "int8-cpu")


def block_ms(run, feed, calls: int = 30) -> float:
    """Median ms of ``calls`` consecutive calls after 5 warm-up calls, then a pause (ORT threads settle)."""
    for _ in range(5):
        run(feed)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        run(feed)
        times.append(time.perf_counter() - start)
    time.sleep(1.0)
    return 1e3 * statistics.median(times)


def bootstrap_auc_se(heldout: MatchHeldout, logits: np.ndarray, draws: int = 500) -> float:
    """Standard error of the ITM AUC over resampled held-out pairs (positives and negatives resampled apart)."""
    pairs = logits[heldout.rerank_rows:]
    positives, negatives = pairs[: heldout.positives], pairs[heldout.positives:]
    rng = np.random.default_rng(0)
    values = [roc_auc(rng.choice(positives, len(positives)), rng.choice(negatives, len(negatives)))
              for _ in range(draws)]
    return float(np.std(values))


def timings(bundle: Bundle, heldout: MatchHeldout) -> dict[str, float]:
    rerank = heldout.batches[0]  # one query's top-k candidates, as the Searcher runs them
    out = {}
    for precision in ("fp32", *PRECISIONS):
        with Session(bundle, "onnxruntime", "fusion", precision, threads=1) as session:
            out[f"rerank_{len(rerank['input_ids'])}_rows_ms_{precision}"] = block_ms(session.run, rerank)
    encoder = QuestionEncoder.from_file(bundle.file("tokenizer.json"), int(bundle.model["max_text_len"]))
    ids, mask = encoder.encode_batch([heldout.database.queries[0].text])
    with Session(bundle, "onnxruntime", "text_embed", "fp32", threads=1) as session:
        out["text_embed_one_query_ms_fp32"] = block_ms(session.run, {"input_ids": ids, "text_mask": mask})
    images = {"visual_feats": rerank["visual_feats"], "visual_mask": rerank["visual_mask"]}
    with Session(bundle, "onnxruntime", "image_embed", "fp32", threads=1) as session:
        out[f"image_embed_{len(rerank['input_ids'])}_images_ms_fp32"] = block_ms(session.run, images)
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["PyTorch fp32", "fp32", *PRECISIONS]
    rows = [results["reference"], *[results["precisions"][p]["candidate"] for p in ("fp32", *PRECISIONS)]]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric, title, budget in ((axes[0], "ndcg10_two_stage", "two-stage nDCG@10", "max_ndcg_drop_points"),
                                      (axes[1], "itm_roc_auc", "ITM ROC-AUC", "max_auc_drop_points")):
        values = [r[metric] for r in rows]
        ax.bar(labels, values, color=["#555", "#4c72b0", "#55a868", "#c44e52", "#8172b2"])
        floor = results["reference"][metric] - MATCH_BUDGETS["int8"].to_dict()[budget] / 100
        ax.axhline(floor, color="k", linestyle="--", linewidth=1, label="budget floor (int8)")
        ax.set_ylim(min([*values, floor]) - 0.01, max(values) + 0.005)
        ax.set_title(f"{title}, {results['heldout']['database_scenes']} scenes, {results['heldout']['queries']} "
                     "queries", fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=5000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--rerank", type=int, default=128)
    parser.add_argument("--bundle-dir", default="runs/match-precision-bundle")
    parser.add_argument("--json", default="benchmarks/match_precision.json")
    parser.add_argument("--plot", default="benchmarks/match_precision.png")
    args = parser.parse_args()
    started = time.perf_counter()
    progress = Progress()
    out = Path(args.bundle_dir)
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(SHIPPED_MATCH_BUNDLE, out)
    calibration = calibrate(out, samples=256, progress=progress)
    bundle = Bundle.open(out)
    heldout = MatchHeldout(bundle, args.scenes, args.queries, args.rerank, progress)
    evaluator = MatchEvaluator(bundle, heldout=heldout)
    fp16 = quantize_fp16(out, evaluator=evaluator, progress=progress)
    int8 = quantize_int8(out, evaluator=evaluator, progress=progress)
    bundle = Bundle.open(out)
    precisions = {"fp32": evaluator.measure_path(bundle.graph_path("fusion")).to_dict(MATCH_BUDGETS["fp32"]),
                  "fp16": fp16["heldout"], **{p: g["heldout"] for p, g in int8["graphs"].items()}}
    excluded = {p: g["excluded"] for p, g in int8["graphs"].items()}
    results = {
        "command": "python benchmarks/match_precision.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "load_average_before_timing": os.getloadavg(), "heldout": heldout.describe(),
        "calibration": {k: calibration[k] for k in ("samples", "source", "lengths")},
        "calibration_shapes": sorted({tuple(s) for s in load_calibration(bundle).shapes()}),
        "reference": evaluator.reference_scores | {"top10": None},
        "auc_bootstrap_se": bootstrap_auc_se(heldout, heldout.reference_logits),
        "precisions": precisions, "int8_excluded_nodes": excluded,
        "budgets": {p: b.to_dict() for p, b in MATCH_BUDGETS.items()},
    }
    results["reference"].pop("top10")
    results["timing_ms"] = timings(bundle, heldout)
    results["load_average_after_timing"] = os.getloadavg()
    results["seconds"] = round(time.perf_counter() - started, 1)
    atomic_write_json(args.json, json_safe(results))
    plot(results, Path(args.plot))
    print(json.dumps(json_safe({k: v for k, v in results.items() if k != "calibration_shapes"}), indent=1))


if __name__ == "__main__":
    main()
