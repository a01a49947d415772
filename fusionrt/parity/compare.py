"""Run a reference and a candidate on the same feeds and measure how far apart their outputs are.

Both sides are anything with ``run(feed) -> dict[str, np.ndarray]`` (a :class:`fusionrt.runtime.Session`,
or an adapter around a torch module), so backends and precisions are compared the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from fusionrt.parity.gates import EVERY_OUTPUT, Gates, Limit
from fusionrt.parity.grid import GridPoint
from fusionrt.parity.metrics import array_metrics, worst
from fusionrt.progress import SILENT, Progress


class Runs(Protocol):
    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class Tolerance:
    """Limits a comparison must stay within. ``max_abs`` and ``min_cosine`` apply to every output compared;
    ``min_agreement`` (argmax of logits) applies to real scenes."""

    max_abs: float = 1e-4
    min_cosine: float = 0.9999
    min_agreement: float = 0.99

    def to_gates(self, source: str = "argument") -> Gates:
        """These limits as parity :class:`Gates` (every output, and scenes' argmax agreement)."""
        return Gates("fp32", {"max_abs": {EVERY_OUTPUT: Limit(self.max_abs, source)},
                              "min_cosine": {EVERY_OUTPUT: Limit(self.min_cosine, source)}},
                     {"min_agreement": Limit(self.min_agreement, source)})

    def output_failures(self, where: str, metrics: Mapping[str, Mapping[str, Any]]) -> list[str]:
        gates = self.to_gates()
        return [f"{where} {failure.output}: {failure.message}" for name, m in metrics.items()
                if (failure := gates.check_output(where, name, m)) is not None]


@dataclass
class PointResult:
    """Metrics of every output at one grid point, or why the point could not be compared."""

    label: str
    sizes: dict[str, int]
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "sizes": self.sizes, "metrics": self.metrics, "error": self.error}


@dataclass
class GridResult:
    """A graph compared over a grid of shapes."""

    graph: str
    points: list[PointResult]

    def summary(self) -> dict[str, dict[str, Any]]:
        """Worst metrics per output over all points."""
        names = dict.fromkeys(name for p in self.points for name in p.metrics)
        return {name: worst([p.metrics[name] for p in self.points if name in p.metrics]) for name in names}

    def failures(self, tolerance: Tolerance) -> list[str]:
        out = []
        for point in self.points:
            where = f"{self.graph} [{point.label}]"
            out.extend([f"{where}: {point.error}"] if point.error else tolerance.output_failures(where, point.metrics))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"graph": self.graph, "points": [p.to_dict() for p in self.points], "worst": self.summary()}


def _run(side: str, runner: Runs, feed: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray] | None, str | None]:
    try:
        return runner.run(feed), None
    except Exception as exc:  # a failing point is a finding to report, not a reason to stop the grid
        return None, f"{side} failed: {type(exc).__name__}: {str(exc).strip()[:300]}"


def compare_grid(graph: str, reference: Runs, candidate: Runs, points: Iterable[GridPoint],
                 progress: Progress = SILENT, phase: str | None = None) -> GridResult:
    """Run both sides at every point; compare every output the reference returns.

    ``progress`` draws one bar named ``phase`` (default ``"<graph> grid"``) over the points.
    """
    results = []
    for point in progress.iterate(list(points), phase or f"{graph} grid", unit="shape"):
        result = PointResult(point.label, dict(point.sizes))
        ref, error = _run("reference", reference, point.feed)
        cand, cand_error = _run("candidate", candidate, point.feed) if ref is not None else (None, None)
        result.error = error or cand_error
        if ref is not None and cand is not None:
            for name, value in ref.items():
                result.metrics[name] = (array_metrics(value, cand[name]) if name in cand else
                                        {**array_metrics(value, np.zeros(0)), "problem": "missing in candidate"})
        results.append(result)
    return GridResult(graph, results)


class MetricAccumulator:
    """Metrics of one output over many batches: global mean and cosine, worst max errors."""

    def __init__(self) -> None:
        self.max_abs = self.max_rel = self.abs_sum = self.dot = self.ref_sq = self.cand_sq = 0.0
        self.count = 0
        self.problem: str | None = None

    def add(self, reference: np.ndarray, candidate: np.ndarray) -> None:
        m = array_metrics(reference, candidate)
        if m["problem"]:
            self.problem = self.problem or m["problem"]
            return
        ref, cand = reference.astype(np.float64).ravel(), candidate.astype(np.float64).ravel()
        self.max_abs, self.max_rel = max(self.max_abs, m["max_abs"]), max(self.max_rel, m["max_rel"])
        self.abs_sum += float(np.abs(ref - cand).sum())
        self.dot += float(ref @ cand)
        self.ref_sq += float(ref @ ref)
        self.cand_sq += float(cand @ cand)
        self.count += ref.size

    def result(self) -> dict[str, Any]:
        if self.problem:
            return {"max_abs": float("inf"), "max_rel": float("inf"), "mean_abs": float("inf"), "cosine": 0.0,
                    "problem": self.problem}
        norms = (self.ref_sq * self.cand_sq) ** 0.5
        cosine = self.dot / norms if norms else (1.0 if self.abs_sum == 0 else 0.0)
        return {"max_abs": self.max_abs, "max_rel": self.max_rel, "mean_abs": self.abs_sum / max(1, self.count),
                "cosine": cosine, "problem": None}
