"""Bounds on ``manifest.json`` and the cross-checks between its model section and its graph entries.

A manifest is read before anything else in a bundle, so it is bounded: its size (a few tens of KB in
practice) and its nesting depth (a 100,000-deep manifest used to raise RecursionError). The graph
entries are then checked against the model's contract sizes: a widened ``value_range`` or ``T`` range
would let the runtime's feed check pass values the graph cannot take (onnxruntime's untyped
InvalidArgument / Fail instead of our InputError).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fusionrt.bundle.spec import FUSION, REGION_ENCODER, GraphSpec
from fusionrt.errors import BundleError

MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 8 << 20
MAX_MANIFEST_DEPTH = 32
# Contract sizes the runtime reads from the model section (app, serve, parity, calibration).
MODEL_SIZES = ("vocab_size", "visual_dim", "max_text_len", "max_visual_len", "num_answers")
# A user's module may have no class output at all (hidden states only): its manifest records no num_answers.
OPTIONAL_SIZES = ("num_answers",)


def check_depth(value: Any, limit: int = MAX_MANIFEST_DEPTH) -> None:
    """Raise :class:`BundleError` if ``value`` nests lists / objects deeper than ``limit`` (iteratively)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > limit:
                    raise BundleError(MANIFEST, f"objects and lists nested at most {limit} deep", "deeper nesting")
                stack.append((child, depth + 1))


def model_sizes(model: Mapping[str, Any]) -> dict[str, int]:
    """The model section's contract sizes, each a positive int (an optional one may be absent or null)."""
    sizes = {}
    for key in MODEL_SIZES:
        value = model.get(key)
        if value is None and key in OPTIONAL_SIZES:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BundleError(f"{MANIFEST} model.{key}", "a positive integer (the model's contract)",
                              repr(value)[:80])
        sizes[key] = value
    return sizes


def check_graphs_against_model(model: Mapping[str, Any], graphs: Mapping[str, GraphSpec]) -> None:
    """The graph entries must agree with the model's sizes: the ids range, the T and M maxima, the widths."""
    if FUSION not in graphs and REGION_ENCODER not in graphs:
        return
    sizes = model_sizes(model)
    try:
        _compare(sizes, graphs)
    except IndexError:
        raise BundleError(f"{MANIFEST} graphs", "tensors of the fusion contract's ranks", "a shorter shape") from None


def _compare(sizes: dict[str, int], graphs: Mapping[str, GraphSpec]) -> None:
    expected: list[tuple[str, object, object]] = []
    if FUSION in graphs:
        fusion = graphs[FUSION]
        ids = _tensor(fusion, "input_ids")
        expected.append(("input_ids value_range", ids.value_range, (0, sizes["vocab_size"] - 1)))
        for name, axis, bound in (("input_ids", 1, "max_text_len"), ("visual_feats", 1, "max_visual_len")):
            symbol = _tensor(fusion, name).shape[axis]
            if isinstance(symbol, str) and fusion.dims[symbol].max > sizes[bound]:
                expected.append((f"dim {symbol} max", fusion.dims[symbol].max, f"<= model.{bound} {sizes[bound]}"))
        expected.append(("visual_feats width", _tensor(fusion, "visual_feats").shape[-1], sizes["visual_dim"]))
        if "num_answers" in sizes and any(t.name == "logits" for t in fusion.outputs):
            expected.append(("logits width", _tensor(fusion, "logits").shape[-1], sizes["num_answers"]))
    if REGION_ENCODER in graphs:
        expected.append(("region_encoder feats width", _tensor(graphs[REGION_ENCODER], "feats").shape[-1],
                         sizes["visual_dim"]))
    for what, got, want in expected:
        if isinstance(want, str) or got != want:
            raise BundleError(f"{MANIFEST} graphs", f"{what} = {want} (from the model section)", repr(got))


def _tensor(graph: GraphSpec, name: str):
    for tensor in (*graph.inputs, *graph.outputs):
        if tensor.name == name:
            return tensor
    raise BundleError(f"{MANIFEST} graphs.{graph.name}", f"a tensor named {name!r}",
                      f"{[t.name for t in (*graph.inputs, *graph.outputs)]}")


def safe_bounds(manifest: Mapping[str, Any], graph: GraphSpec, precision: str) -> dict[str, float]:
    """Largest |value| each float input of ``graph`` at ``precision`` may take, as measured and recorded in
    the manifest's ``safe_ranges`` section (:mod:`fusionrt.calibration.safe_range`); ``{}`` where none is."""
    where = f"{MANIFEST} safe_ranges.{graph.name}.{precision}"
    section = manifest.get("safe_ranges", {})
    entry = section.get(graph.name, {}).get(precision, {}) if isinstance(section, dict) and \
        isinstance(section.get(graph.name, {}), dict) else None
    if not isinstance(entry, dict):
        raise BundleError(where, "an object of input name -> {max_abs: number}", repr(entry)[:80])
    floats = {t.name for t in graph.inputs if t.np_dtype.kind == "f"}
    bounds = {}
    for name, record in entry.items():
        bound = record.get("max_abs") if isinstance(record, dict) else None
        if name not in floats or not isinstance(bound, int | float) or isinstance(bound, bool) or not bound > 0:
            raise BundleError(f"{where}.{name}", f"a float input of the graph {sorted(floats)} with a positive "
                                                 "max_abs", repr(record)[:80])
        bounds[name] = float(bound)
    return bounds
