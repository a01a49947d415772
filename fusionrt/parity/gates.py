"""The gates a parity run must pass, chosen for the candidate's precision, each with where it came from.

fp32 is gated numerically (max abs error 1e-4, cosine 0.9999, argmax agreement 0.99): both sides
compute the same thing. A reduced precision (fp16, bf16, int8, int8-cpu) cannot meet fp32 numbers; it
is gated as it was admitted into the bundle: the accuracy budget recorded in the manifest (largest
accuracy drop, smallest argmax agreement on held-out scenes), plus a numeric sanity gate (finite
outputs, cosine above a per-precision floor measured on the shipped model, see ``COSINE_FLOORS``).
Any override (a CLI flag) replaces its default. :func:`gates_for` is what ``fusionrt parity`` and
``fusionrt pipeline`` call.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fusionrt.bundle.manifest import VQA_TASK, Bundle
from fusionrt.errors import InputError
from fusionrt.parity.budgets import BUDGETS, CUSTOM_BUDGETS

MANIFEST, FLAG = "manifest", "flag"
EVERY_OUTPUT = "*"
# Per-output gates (a limit per output name, or EVERY_OUTPUT) and gates on the real-scene task metrics.
OUTPUT_GATES = ("max_abs", "max_rel", "min_cosine")
SCENE_GATES = ("min_agreement", "max_drop_points")
FP32_GATES: dict[str, float] = {"max_abs": 1e-4, "min_cosine": 0.9999, "min_agreement": 0.99}
# Cosine floors of the numeric sanity gate, per precision and output (EVERY_OUTPUT: outputs of graphs that stay
# fp32, e.g. the region encoder's feats). Derived from the worst cosine measured on the shipped model (torch fp32
# vs onnxruntime, 27-shape fusion grid, 3-shape region-encoder grid and 200 held-out scenes, 2-core AMD EPYC
# without AMX; `benchmarks/parity_floors.py`, table in benchmarks/RESULTS.md "Parity gates"): floor = 1 - max(5 x
# (1 - worst), 0.001), rounded down. Worst seen: fp16 hidden 0.999999, logits 1.000000; int8 hidden 0.989468
# (B=8 T=1 M=16), logits 0.996427; int8-cpu hidden 0.993827, logits 0.998497. A floor catches a broken graph
# (wrong weights, a bad cast); accuracy is gated by the budget. bf16 had no graph to measure: fp16's distances
# x4 (8 mantissa bits to fp16's 10) give the same 0.001 minimum; measure it once a bf16 graph exists.
COSINE_FLOORS: dict[str, dict[str, float]] = {
    "fp16": {"hidden": 0.999, "logits": 0.999, EVERY_OUTPUT: 0.999},
    "bf16": {"hidden": 0.999, "logits": 0.999, EVERY_OUTPUT: 0.999},
    "int8": {"hidden": 0.94, "logits": 0.98, EVERY_OUTPUT: 0.999},
    "int8-cpu": {"hidden": 0.96, "logits": 0.992, EVERY_OUTPUT: 0.999},
}
GATE_TEXT = {"max_abs": "max abs error <= {}", "max_rel": "max rel error <= {}", "min_cosine": "cosine >= {}",
             "min_agreement": "argmax agreement >= {} (scenes)",
             "max_drop_points": "accuracy drop <= {} points (scenes)"}
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int8-cpu")


def default_for(precision: str) -> str:
    return f"default for {precision}"


@dataclass(frozen=True)
class Limit:
    """One gate's value and where it came from: "manifest", "default for <precision>" or "flag"."""

    value: float
    source: str


@dataclass(frozen=True)
class Failure:
    """One gate broken at one place. ``excess`` (how far past the gate; 1 is at the limit) orders the worst first."""

    where: str
    output: str | None
    message: str
    point: str | None = None
    excess: float = math.inf

    def __str__(self) -> str:
        at = f"{self.where} [{self.point}]" if self.point else self.where
        return f"{at} {self.output}: {self.message}" if self.output else f"{at}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"where": self.where, "point": self.point, "output": self.output, "message": self.message,
                "excess": self.excess, "text": str(self)}


def _ratio(value: float, limit: float) -> float:
    return value / limit if limit > 0 else math.inf


@dataclass(frozen=True)
class Gates:
    """The gates of one parity run: ``outputs[gate][output or "*"]`` and ``scenes[gate]``, each a :class:`Limit`.

    Outputs must always be finite and of the reference's shape. ``max_abs`` and ``max_rel`` together
    follow Polygraphy's ``--check-error-stat max``: an output fails when its max abs error is over
    ``max_abs`` and its max rel error is over ``max_rel``; either alone is a plain limit.
    """

    precision: str
    outputs: Mapping[str, Mapping[str, Limit]] = field(default_factory=dict)
    scenes: Mapping[str, Limit] = field(default_factory=dict)

    def limit(self, gate: str, output: str) -> Limit | None:
        per_output = self.outputs.get(gate, {})
        return per_output.get(output, per_output.get(EVERY_OUTPUT))

    def check_output(self, where: str, output: str, metrics: Mapping[str, Any], point: str | None = None
                     ) -> Failure | None:
        """The failure of one output's metrics (from :func:`fusionrt.parity.metrics.array_metrics`), if any."""
        if metrics["problem"]:
            return Failure(where, output, metrics["problem"], point)
        broken: list[tuple[str, float]] = []
        atol, rtol = self.limit("max_abs", output), self.limit("max_rel", output)
        over_abs = atol is not None and metrics["max_abs"] > atol.value
        over_rel = rtol is not None and metrics["max_rel"] > rtol.value
        if (over_abs or atol is None) and (over_rel or rtol is None) and (atol or rtol):
            if atol is not None:
                broken.append((f"max abs error {metrics['max_abs']:.3g} > {atol.value:g}",
                               _ratio(metrics["max_abs"], atol.value)))
            if rtol is not None:
                broken.append((f"max rel error {metrics['max_rel']:.3g} > {rtol.value:g}",
                               _ratio(metrics["max_rel"], rtol.value)))
            if atol is not None and rtol is not None:  # both must be exceeded: the smaller excess is the margin
                broken = [("; ".join(text for text, _ in broken), min(excess for _, excess in broken))]
        floor = self.limit("min_cosine", output)
        if floor is not None and metrics["cosine"] < floor.value:
            broken.append((f"cosine {metrics['cosine']:.6f} < {floor.value:g}",
                           _ratio(1.0 - metrics["cosine"], 1.0 - floor.value)))
        if not broken:
            return None
        return Failure(where, output, "; ".join(text for text, _ in broken), point, max(e for _, e in broken))

    def check_scenes(self, agreement: float | None, accuracy: Mapping[str, float] | None,
                     where: str = "scenes") -> list[Failure]:
        """Task gates on real held-out data: argmax agreement and accuracy drop (percentage points) against the
        reference; a metric the data cannot give (None: no logits-like output, no labels) is not gated."""
        out = []
        floor, budget = self.scenes.get("min_agreement"), self.scenes.get("max_drop_points")
        if floor is not None and agreement is not None and agreement < floor.value:
            out.append(Failure(where, None, f"argmax agreement {agreement:.4f} < {floor.value:g}",
                               excess=_ratio(1.0 - agreement, 1.0 - floor.value)))
        if budget is not None and accuracy is not None:
            drop = 100.0 * (accuracy["reference"] - accuracy["candidate"])
            if drop > budget.value:
                out.append(Failure(where, None, f"accuracy drop {drop:.3f} points > {budget.value:g}",
                                   excess=_ratio(drop, budget.value)))
        return out

    def rows(self) -> list[tuple[str, str]]:
        """``(gate, source)`` lines for a report, the always-on finiteness gate first."""
        rows = [("finite outputs of the reference's shape", "always")]
        for gate in OUTPUT_GATES:
            per_output = self.outputs.get(gate, {})
            for output, limit in per_output.items():
                on = output if output != EVERY_OUTPUT else "other outputs" if len(per_output) > 1 else "every output"
                rows.append((f"{GATE_TEXT[gate].format(f'{limit.value:g}')} on {on}", limit.source))
        rows += [(GATE_TEXT[gate].format(f"{limit.value:g}"), limit.source) for gate, limit in self.scenes.items()]
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision,
                "outputs": {g: {o: vars(limit) for o, limit in per.items()} for g, per in self.outputs.items()},
                "scenes": {g: vars(limit) for g, limit in self.scenes.items()}}


def _manifest_budget(manifest: Mapping[str, Any], precision: str) -> dict[str, float] | None:
    """The budget ``precision`` was admitted with: ``quantization[p].heldout.budget`` (fp16) or
    ``quantization[p].graphs[p].heldout.budget`` (int8 records hold both int8 graphs)."""
    record = manifest.get("quantization", {}).get(precision)
    if not isinstance(record, Mapping):
        return None
    heldout = record.get("heldout") or record.get("graphs", {}).get(precision, {}).get("heldout", {})
    budget = heldout.get("budget") if isinstance(heldout, Mapping) else None
    return dict(budget) if isinstance(budget, Mapping) else None


def _custom_defaults(manifest: Mapping[str, Any], precision: str
                     ) -> tuple[dict[str, dict[str, Limit]], dict[str, Limit]]:
    """A user's model: every gate from the budget the precision was admitted with (recorded in the manifest,
    measured on its own held-out feeds), the cosine floor on every output; the custom defaults otherwise."""
    budget, source = _manifest_budget(manifest, precision), MANIFEST
    if budget is None:
        budget, source = CUSTOM_BUDGETS[precision].to_dict(), default_for(precision)
    outputs = {"min_cosine": {EVERY_OUTPUT: Limit(float(budget["min_cosine"]), source)}} \
        if "min_cosine" in budget else {}
    scenes = {gate: Limit(float(budget[gate]), source) for gate in ("max_drop_points", "min_agreement")
              if gate in budget}
    return outputs, scenes


def _defaults(manifest: Mapping[str, Any], precision: str) -> tuple[dict[str, dict[str, Limit]], dict[str, Limit]]:
    if precision in CUSTOM_BUDGETS and manifest.get("task", VQA_TASK) != VQA_TASK:
        return _custom_defaults(manifest, precision)
    if precision not in COSINE_FLOORS:  # fp32, or a precision nothing is known about: as strict as fp32
        source = default_for("fp32")
        outputs = {gate: {EVERY_OUTPUT: Limit(FP32_GATES[gate], source)} for gate in ("max_abs", "min_cosine")}
        return outputs, {"min_agreement": Limit(FP32_GATES["min_agreement"], source)}
    source = default_for(precision)
    outputs = {"min_cosine": {o: Limit(v, source) for o, v in COSINE_FLOORS[precision].items()}}
    budget, budget_source = _manifest_budget(manifest, precision), MANIFEST
    if budget is None:
        known = BUDGETS.get(precision)
        budget, budget_source = (known.to_dict() if known else {}), source
    scenes = {gate: Limit(float(budget[gate]), budget_source) for gate in ("max_drop_points", "min_agreement")
              if gate in budget}
    return outputs, scenes


def _checked(gate: str, output: str, value: Any) -> float:
    low, high = (-1.0, 1.0) if gate == "min_cosine" else (0.0, 1.0) if gate == "min_agreement" else (0.0, math.inf)
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and low <= number <= high):
        where = gate if output == EVERY_OUTPUT else f"{gate} of {output}"
        raise InputError(where, f"a number in [{low:g}, {high:g}]", repr(value))
    return number


def gates_for(bundle: Bundle | str | Path, precision: str,
              overrides: Mapping[str, float | Mapping[str, float]] | None = None) -> Gates:
    """The gates for a ``precision`` candidate of ``bundle``: its defaults, then ``overrides``.

    ``overrides`` maps a gate (``max_abs``, ``max_rel``, ``min_cosine``: a number for every output or
    ``{output: number}``, ``"*"`` meaning every output; ``min_agreement``, ``max_drop_points``: a number)
    to its value; each one's source becomes "flag". A value for every output replaces that gate's
    per-output defaults; a value for one output replaces only that output's. Raises :class:`InputError`
    for an unknown gate or a value out of range.
    """
    manifest = bundle.manifest if isinstance(bundle, Bundle) else Bundle.open(bundle).manifest
    outputs, scenes = _defaults(manifest, precision)
    for gate, value in (overrides or {}).items():
        if gate in SCENE_GATES:
            scenes[gate] = Limit(_checked(gate, EVERY_OUTPUT, value), FLAG)
        elif gate in OUTPUT_GATES:
            per_output = dict(value) if isinstance(value, Mapping) else {EVERY_OUTPUT: value}
            limits = {o: Limit(_checked(gate, o, v), FLAG) for o, v in per_output.items()}
            outputs[gate] = limits if EVERY_OUTPUT in limits else {**outputs.get(gate, {}), **limits}
        else:
            raise InputError("gate", f"one of {[*OUTPUT_GATES, *SCENE_GATES]}", repr(gate))
    return Gates(precision, outputs, scenes)
