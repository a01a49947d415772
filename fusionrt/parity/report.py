"""``run_parity``: two backends (or precisions) of one bundle over shape grids and real scenes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusionrt.bundle.manifest import VQA_TASK, Bundle
from fusionrt.data.dataset import QASet
from fusionrt.parity.compare import GridResult, Runs, Tolerance, compare_grid
from fusionrt.parity.gates import Failure, Gates, gates_for
from fusionrt.parity.grid import grid_points
from fusionrt.parity.heldout import HeldoutSet, compare_heldout
from fusionrt.parity.scenes import SceneResult, compare_scenes, heldout_questions
from fusionrt.progress import SILENT, Progress
from fusionrt.runtime.session import Session

WORST_SHOWN = 5


@dataclass
class ParityReport:
    """Grid results per graph, the scene result (if run), the gates applied and the verdict."""

    bundle: str
    reference: dict[str, Any]
    candidate: dict[str, Any]
    gates: Gates
    grids: list[GridResult]
    scenes: SceneResult | None = None

    @property
    def failures(self) -> list[Failure]:
        """Every broken gate: one entry per grid point and output, then the scene gates."""
        out = []
        for grid in self.grids:
            for point in grid.points:
                if point.error:
                    out.append(Failure(grid.graph, None, point.error, point.label))
                out += [f for name, m in point.metrics.items()
                        if (f := self.gates.check_output(grid.graph, name, m, point.label)) is not None]
        if self.scenes is not None:
            where = self.scenes.label
            out += [f for name, m in self.scenes.metrics.items()
                    if (f := self.gates.check_output(where, name, m)) is not None]
            out += self.gates.check_scenes(self.scenes.agreement, self.scenes.accuracy, where)
        return out

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle": self.bundle, "reference": self.reference, "candidate": self.candidate,
            "gates": self.gates.to_dict(), "passed": self.passed, "failures": [f.to_dict() for f in self.failures],
            "grids": [g.to_dict() for g in self.grids],
            "scenes": self.scenes.to_dict() if self.scenes is not None else None,
        }

    def failure_rows(self, shown: int = WORST_SHOWN) -> list[str]:
        """The ``shown`` worst failures per place and output (furthest past their gate first), and how many more."""
        groups: dict[tuple[str, str | None], list[Failure]] = {}
        for failure in self.failures:
            groups.setdefault((failure.where, failure.output), []).append(failure)
        rows = []
        for (where, output), failures in groups.items():
            failures.sort(key=lambda f: -f.excess)
            rows += [f"  {f}" for f in failures[:shown]]
            if len(failures) > shown:
                rows.append(f"  ... and {len(failures) - shown} more {where} points failing"
                            + (f" on {output}" if output else "") + " (--json OUT keeps every point)")
        return rows

    def table(self) -> str:
        """A plain-text table: worst metrics per graph and output, the gates and their sources, then the verdict."""
        def side(d: dict[str, Any]) -> str:
            return f"{d['backend']} {d['precision']}"

        rows = [f"parity of {self.bundle}: {side(self.reference)} (reference) vs {side(self.candidate)} (candidate)",
                f"{'where':<32} {'output':<8} {'max abs':>10} {'max rel':>10} {'mean abs':>10} {'cosine':>10}"]
        sections = [(f"{g.graph} grid ({len(g.points)} shapes)", g.summary()) for g in self.grids]
        if self.scenes is not None:
            sections.append((f"{self.scenes.label} ({self.scenes.questions} rows)" if self.scenes.label != "scenes"
                             else f"scenes ({self.scenes.questions} questions)", self.scenes.metrics))
        for where, metrics in sections:
            for name, m in metrics.items():
                problem = f"  {m['problem']}" if m["problem"] else ""
                rows.append(f"{where:<32} {name:<8} {m['max_abs']:>10.3g} {m['max_rel']:>10.3g} "
                            f"{m['mean_abs']:>10.3g} {m['cosine']:>10.6f}{problem}")
        if self.scenes is not None and self.scenes.agreement is not None:
            acc = self.scenes.accuracy
            rows.append(f"argmax agreement {self.scenes.agreement:.4f}" + (
                f"; task accuracy reference {acc['reference']:.4f}, candidate {acc['candidate']:.4f}" if acc else ""))
        rows.append(f"gates for the {self.gates.precision} candidate:")
        rows += [f"  {text:<48} {source}" for text, source in self.gates.rows()]
        if self.scenes is None and self.gates.scenes:
            rows.append("  (no scenes were compared: the scene gates did not apply)")
        failures = self.failures
        rows.append("PASSED" if not failures else f"FAILED ({len(failures)}):")
        rows += self.failure_rows()
        return "\n".join(rows)


def run_parity(bundle: str | Path | Bundle, reference: str = "torch", candidate: str = "onnxruntime", *,
               reference_precision: str = "fp32", candidate_precision: str = "fp32", scenes: int = 200,
               gates: Gates | None = None, tolerance: Tolerance | None = None, seed: int = 0,
               reference_options: dict[str, Any] | None = None, candidate_options: dict[str, Any] | None = None,
               questions: QASet | None = None, reference_runners: Mapping[str, Runs] | None = None,
               heldout: HeldoutSet | None = None, progress: Progress = SILENT) -> ParityReport:
    """Compare ``candidate`` against ``reference`` on every graph's shape grid and on ``scenes`` held-out scenes.

    ``gates`` default to :func:`gates_for` the candidate's precision; ``tolerance`` (older API) sets fp32-style
    gates instead. Scenes need the bundle's region encoder and tokenizer; a bundle of a user's fusion module
    is compared on the grid and on its ``heldout`` feeds (:class:`fusionrt.parity.heldout.FeedHeldout`, whose
    reference outputs are computed once), or on the grid only without them.

    To compare several candidates against one reference, pass the same ``questions`` (held-out scene questions,
    e.g. :meth:`fusionrt.parity.heldout.Heldout.scene_questions`) and ``reference_runners`` (graph -> runner,
    e.g. :class:`fusionrt.parity.heldout.MemoizedRuns` over reference Sessions): the reference then runs each
    feed once for all of them. The caller keeps and closes the runners it passes.
    """
    opened = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
    if gates is None:
        gates = tolerance.to_gates() if tolerance is not None else gates_for(opened, candidate_precision)
    sides: dict[str, dict[str, Any]] = {"reference": dict(reference_runners or {}), "candidate": {}}
    for graph in opened.graphs:
        if graph not in sides["reference"]:
            sides["reference"][graph] = Session(opened, reference, graph, reference_precision,
                                                **(reference_options or {}))
        sides["candidate"][graph] = Session(opened, candidate, graph, candidate_precision, **(candidate_options or {}))
    grids = [compare_grid(graph, sides["reference"][graph], sides["candidate"][graph],
                          grid_points(opened.graph(graph), seed=seed), progress)
             for graph in opened.graphs]
    scene_result = None
    if scenes > 0 and opened.task == VQA_TASK:  # the scene world's questions: only a bundle of our VQA task
        qa = questions if questions is not None else heldout_questions(opened, scenes, progress=progress)
        batch = min(64, opened.graph("fusion").dims["B"].max)
        scene_result = compare_scenes(sides["reference"], sides["candidate"], qa,
                                      int(opened.model["visual_dim"]), batch, progress)
    elif heldout is not None and opened.task != VQA_TASK:
        scene_result = compare_heldout(heldout, sides["candidate"]["fusion"], progress)
    return ParityReport(str(opened.path), sides["reference"]["fusion"].describe(),
                        sides["candidate"]["fusion"].describe(), gates, grids, scene_result)
