"""Which nodes must stay FP32 in a half-precision graph, decided from measured activations (as ModelOpt's autocast).

The fp32 graph runs over the calibration set with every float tensor exposed as an output; each tensor's
largest magnitude and largest shape are kept. A node stays FP32 when (thresholds in :class:`Thresholds`):

- **range**: any float input or output reached ``|x| > data_max`` (512, ModelOpt autocast's default): such a
  value leaves little headroom below FP16's 65504 for a sum or product downstream;
- **squares**: a node that squares its input internally (LayerNormalization's variance, Pow, ReduceSumSquare)
  saw ``|x| > square_max`` (255: 255^2 = 65025 is the largest square below 65504);
- **initializers**: a float initializer it reads has ``|w| > init_max`` (65504, FP16's largest finite value);
- **reduction depth**: it sums more than ``max_reduction_depth`` terms (2048): FP16's unit roundoff is
  u = 2^-11, and the error bound n*u of an n-term sum reaches 1 (no correct digit left) at n = 2048. Depths:
  MatMul/Gemm the inner dimension, Reduce* the reduced elements, Softmax/LayerNormalization the normalized axis.

Everything else goes to the low-precision type. The thresholds are data-independent; the data decides which
nodes cross them. BF16 has FP32's exponent range, so for a BF16 graph only the reduction-depth rule matters in
principle; :func:`fp32_nodes` applies all rules unless told otherwise, so one keep-set serves both types.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fusionrt.calibration.errors import CalibrationError
from fusionrt.calibration.polygraphy_loader import batches

SQUARING_OPS = ("LayerNormalization", "Pow", "ReduceSumSquare")
SUM_REDUCTIONS = ("ReduceSum", "ReduceMean", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp")


@dataclass(frozen=True)
class Thresholds:
    """The limits of the module docstring; change them per call to keep more (or fewer) nodes in FP32."""

    data_max: float = 512.0
    square_max: float = 255.0
    init_max: float = 65504.0
    max_reduction_depth: int = 2048

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


DEFAULT_THRESHOLDS = Thresholds()


@dataclass
class ActivationStats:
    """Per float tensor of the fp32 graph: largest ``|x|`` and largest extent of each axis over the samples."""

    max_abs: dict[str, float] = field(default_factory=dict)
    shape: dict[str, tuple[int, ...]] = field(default_factory=dict)
    samples: int = 0

    def add(self, name: str, value: np.ndarray) -> None:
        if value.size:
            peak = float(np.max(np.abs(value)))
            if not math.isfinite(peak):
                raise CalibrationError(f"activation {name}", "finite values in the fp32 graph", f"max |x| = {peak}")
            self.max_abs[name] = max(self.max_abs.get(name, 0.0), peak)
        old = self.shape.get(name)
        self.shape[name] = tuple(value.shape) if old is None else tuple(max(a, b) for a, b in zip(old, value.shape,
                                                                                                  strict=True))


def collect_activation_stats(fp32_path: str | Path, feeds: Iterable[Mapping[str, np.ndarray]]) -> ActivationStats:
    """Run the fp32 graph over ``feeds`` (ONNX Runtime, CPU, no graph optimization so every tensor exists)
    and return the largest magnitude and shape of each float tensor, graph inputs and outputs included."""
    import onnx
    import onnxruntime

    model = onnx.shape_inference.infer_shapes(onnx.load(str(fp32_path)))
    graph = model.graph
    float_types = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    known_outputs = {o.name for o in graph.output}
    for info in graph.value_info:
        if info.type.tensor_type.elem_type in float_types and info.name not in known_outputs:
            graph.output.append(info)
    names = [o.name for o in graph.output if o.type.tensor_type.elem_type in float_types]
    inputs = [i.name for i in graph.input if i.type.tensor_type.elem_type in float_types]
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    stats = ActivationStats()
    for feed in feeds:
        for name, value in zip(names, session.run(names, dict(feed)), strict=True):
            stats.add(name, np.asarray(value))
        for name in inputs:
            stats.add(name, np.asarray(feed[name]))
        stats.samples += 1
    if not stats.samples:
        raise CalibrationError("calibration feeds", "at least one sample", "none")
    return stats


def _attribute(node: Any, name: str, default: Any) -> Any:
    import onnx

    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def reduction_depth(node: Any, stats: ActivationStats, initializers: Mapping[str, np.ndarray]) -> int:
    """How many terms one output element of ``node`` sums (0 for a node that does not reduce)."""

    def shape(name: str) -> tuple[int, ...] | None:
        if name in initializers:
            return tuple(initializers[name].shape)
        return stats.shape.get(name)

    first = shape(node.input[0]) if node.input else None
    if first is None or not first:
        return 0
    if node.op_type == "MatMul":
        return first[-1]
    if node.op_type == "Gemm":
        return first[0] if _attribute(node, "transA", 0) else first[-1]
    if node.op_type in ("Softmax", "LogSoftmax"):
        return first[_attribute(node, "axis", -1)]
    if node.op_type == "LayerNormalization":
        return int(np.prod(first[_attribute(node, "axis", -1):]))
    if node.op_type in SUM_REDUCTIONS:
        axes = initializers[node.input[1]].tolist() if len(node.input) > 1 and node.input[1] in initializers \
            else _attribute(node, "axes", None)
        return int(np.prod(first if not axes else [first[a] for a in axes]))
    return 0


def fp32_nodes(fp32_path: str | Path, stats: ActivationStats,
               thresholds: Thresholds = DEFAULT_THRESHOLDS) -> dict[str, str]:
    """Node name -> why it stays FP32, for every node of the fp32 graph that breaks one of ``thresholds``."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(fp32_path))
    initializers = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:  # Constant nodes hold initializers too
        if node.op_type == "Constant" and node.attribute and node.attribute[0].type == onnx.AttributeProto.TENSOR:
            initializers[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    keep: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type == "Constant":
            continue
        reasons = []
        for role, names in (("input", node.input), ("output", node.output)):
            for name in names:
                if name in initializers:
                    values = initializers[name]
                    if values.dtype.kind == "f" and values.size and np.abs(values).max() > thresholds.init_max:
                        reasons.append(f"initializer {name} |w| up to {np.abs(values).max():.4g} > init_max")
                    continue
                peak = stats.max_abs.get(name)
                if peak is None:
                    continue
                if peak > thresholds.data_max:
                    reasons.append(f"{role} {name} |x| up to {peak:.4g} > data_max {thresholds.data_max:g}")
                elif role == "input" and node.op_type in SQUARING_OPS and peak > thresholds.square_max:
                    reasons.append(f"squares input {name} |x| up to {peak:.4g} > square_max {thresholds.square_max:g}")
        depth = reduction_depth(node, stats, initializers)
        if depth > thresholds.max_reduction_depth:
            reasons.append(f"reduction depth {depth} > {thresholds.max_reduction_depth}")
        if reasons:
            keep[node.name] = "; ".join(dict.fromkeys(reasons))
    return keep


def stats_feeds(data: Any, batch: int = 16) -> Iterator[dict[str, np.ndarray]]:
    """The feeds the keep-set is measured on: each sample of the :class:`CalibrationSet` ``data`` at its own
    length (as the INT8 ranges see them), then the set in padded batches of ``batch`` rows, as a server runs
    them: only in padded batches do the mask fill and padded positions flow through the graph."""
    yield from data.feeds()
    yield from batches(data.arrays(), batch)
