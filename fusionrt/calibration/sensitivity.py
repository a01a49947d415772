"""Which MatMul/Gemm nodes cost task accuracy when quantized, and the fewest to leave in float.

Leave-one-out on the task: each node is excluded alone and the held-out accuracy and agreement
measured (the mean logit error breaks ties); nodes are then excluded greedily, most helpful first,
until the budget is met. Greedy on a leave-one-out ranking is not guaranteed minimal, but costs
one quantization and evaluation per node plus one per step instead of a search over subsets.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from fusionrt.calibration.errors import BudgetExceededError
from fusionrt.calibration.qdq import Recipe, quantizable_nodes, write_qdq
from fusionrt.calibration.ranges import Ranges
from fusionrt.parity.budgets import Budget
from fusionrt.parity.heldout import HeldoutEvaluator
from fusionrt.progress import SILENT, Progress
from fusionrt.runtime.backends.onnxrt import session_from_onnx


def latency_ms(onnx_path: str | Path, feed: dict[str, np.ndarray], runs: int = 20, threads: int | None = None) -> float:
    """Median latency of one ORT CPU run on ``feed`` after 3 warm-up runs (for the cost of exclusions)."""
    session = session_from_onnx(onnx_path, providers=["CPUExecutionProvider"], threads=threads)
    for _ in range(3):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def exclude_for_budget(fp32_path: str | Path, ranges: Ranges, recipe: Recipe, evaluator: HeldoutEvaluator,
                       budget: Budget, progress: Progress = SILENT) -> dict[str, Any]:
    """Find the fewest nodes to leave unquantized so ``recipe`` meets ``budget``; return the exclusion list, the
    per-node table and the latency cost. Raises :class:`BudgetExceededError` if even excluding all fails."""
    nodes = quantizable_nodes(fp32_path)
    with tempfile.TemporaryDirectory(prefix="fusionrt-sens-") as tmp:
        candidate = Path(tmp) / "candidate.onnx"
        table = []
        for node in progress.iterate(nodes, f"sensitivity ({recipe.precision})", unit="node"):
            write_qdq(fp32_path, candidate, ranges, recipe, exclude=[node])
            m = evaluator.measure_path(candidate)
            table.append({"node": node, "accuracy": m.accuracy, "agreement": m.agreement,
                          "min_cosine": m.min_cosine, "logits_mean_abs": m.logits_mean_abs})

        def unknown_last(value: float | None) -> float:  # no labels / no logits: that metric does not order
            return -value if value is not None else 0.0

        # Task metrics first; the logit error orders nodes whose argmax effect is the same (often all of them).
        order = sorted(table, key=lambda row: (unknown_last(row["agreement"]), unknown_last(row["accuracy"]),
                                               -row["min_cosine"], row["logits_mean_abs"]))
        for count in range(1, len(order) + 1):
            excluded = [row["node"] for row in order[:count]]
            write_qdq(fp32_path, candidate, ranges, recipe, exclude=excluded)
            m = evaluator.measure_path(candidate)
            verdict = "; ".join(m.failures(budget)) or "within budget"
            progress.note(f"sensitivity ({recipe.precision}): {count} excluded -> {verdict}")
            if not m.failures(budget):
                feed = max(evaluator.batches, key=lambda f: f["input_ids"].shape[0])
                full = Path(tmp) / "full.onnx"
                write_qdq(fp32_path, full, ranges, recipe)
                return {"excluded": excluded, "table": table, "measurement": m.to_dict(budget),
                        "latency_ms_all_quantized": latency_ms(full, feed),
                        "latency_ms_with_exclusions": latency_ms(candidate, feed),
                        "latency_batch": int(feed["input_ids"].shape[0])}
    raise BudgetExceededError(f"{recipe.precision} graph", f"accuracy within {budget.to_dict()}",
                              "a miss even with every MatMul/Gemm left in float",
                              {"table": table, "budget": budget.to_dict()})
