"""Measure how large the fusion graph's float inputs may be before its outputs stop being finite.

A float16 graph overflows long before float32 does: ``visual_feats`` of 6e4 (finite) made the fp16
graph return all-NaN logits, and at ~1e38 the fp32 graph does the same. The runtime refuses feeds
outside the bound recorded here (``manifest.json`` section ``safe_ranges``, per graph, precision and
input) and checks every output for non-finite values besides.

How the bound is measured: for each probe direction ``d`` (max |d| = 1) the largest scale ``s`` with
finite outputs for ``s * d`` is found by bisection in log space between 1 and float32's max, on
onnxruntime (CPU). Directions: all +1, all -1, two random sign patterns (every element at full
magnitude, which is what drives a matmul's sums furthest) and a Gaussian one; ids and masks are a fixed
padded batch. The bound recorded is the smallest such scale divided by :data:`MARGIN`: not a proof for
every direction, hence the margin, and the output check catches what the bound misses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fusionrt.bundle.manifest import Bundle
from fusionrt.bundle.spec import FUSION, GraphSpec
from fusionrt.parity.grid import fusion_feed

SECTION = "safe_ranges"
MARGIN = 4.0
FLOAT32_MAX = float(np.finfo(np.float32).max)
BISECTIONS = 24
PROBE_BATCH, PROBE_SEED = 4, 0


def _directions(shape: tuple[int, ...], rng: np.random.Generator) -> dict[str, np.ndarray]:
    gauss = rng.standard_normal(shape)
    return {"ones": np.ones(shape), "minus_ones": -np.ones(shape),
            "signs_a": np.sign(rng.standard_normal(shape)), "signs_b": np.sign(rng.standard_normal(shape)),
            "gaussian": gauss / np.abs(gauss).max()}


def largest_finite_scale(run: Any, feed: dict[str, np.ndarray], name: str, direction: np.ndarray) -> float:
    """The largest ``s`` in [1, float32 max] with finite outputs for ``feed[name] = s * direction``."""
    def finite(scale: float) -> bool:
        value = np.clip(direction * scale, -FLOAT32_MAX, FLOAT32_MAX).astype(np.float32)
        return all(np.isfinite(out).all() for out in run({**feed, name: value}))

    low, high = 1.0, FLOAT32_MAX
    if finite(high):
        return high
    for _ in range(BISECTIONS):
        middle = float(np.sqrt(low) * np.sqrt(high))
        low, high = (middle, high) if finite(middle) else (low, middle)
    return low


def measure_safe_abs(graph_path: str | Path, graph: GraphSpec) -> dict[str, dict[str, Any]]:
    """``{input: {"max_abs": bound, "measured": {direction: scale}}}`` for every float input of ``graph``."""
    from fusionrt.runtime.backends.onnxrt import session_from_onnx

    session = session_from_onnx(graph_path, threads=1)
    outputs = [o.name for o in session.get_outputs()]
    rng = np.random.default_rng(PROBE_SEED)
    text = min(8, graph.dims["T"].max) if "T" in graph.dims else 1
    visual = min(4, graph.dims["M"].max) if "M" in graph.dims else 1
    feed = fusion_feed(graph, PROBE_BATCH, text, visual, rng)
    bounds = {}
    for spec in graph.inputs:
        if spec.np_dtype.kind != "f":
            continue
        measured = {name: float(f"{largest_finite_scale(lambda f: session.run(outputs, f), feed, spec.name, d):.4g}")
                    for name, d in _directions(feed[spec.name].shape, rng).items()}
        bounds[spec.name] = {"max_abs": float(f"{min(measured.values()) / MARGIN:.4g}"), "measured": measured}
    return bounds


def safe_ranges_with(bundle: Bundle, paths: dict[str, Path]) -> dict[str, Any]:
    """The bundle's ``safe_ranges`` section with the fusion graph's ``paths`` (precision -> graph file, which
    may still be staged) measured; fp32 is measured too when the section lacks it."""
    section = {graph: dict(entries) for graph, entries in bundle.manifest.get(SECTION, {}).items()}
    fusion = section.setdefault(FUSION, {})
    graph = bundle.graph(FUSION)
    todo = dict(paths)
    if "fp32" not in fusion and "fp32" in graph.precisions:
        todo.setdefault("fp32", bundle.graph_path(FUSION, "fp32"))
    for precision, path in todo.items():
        fusion[precision] = measure_safe_abs(path, graph)
    return section
