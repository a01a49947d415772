"""FP16: a mixed-precision copy of the fp32 graph with float32 inputs and outputs.

Numerically fragile ops (LayerNorm, Softmax, reductions, the mask's ``Where``, GELU's ``Erf``)
stay in FP32: the converter inserts Casts around them. Its output is not topologically sorted, so
the nodes are sorted before ``onnx.checker`` runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fusionrt.calibration.errors import QuantizationError

# What TensorRT and field-notes.md say overflows or loses too much in FP16; configurable per call.
DEFAULT_KEEP_FP32: tuple[str, ...] = (
    "LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "Erf", "Pow", "Sqrt", "Div", "Where", "Clip",
)
FP16_MAX = float(np.finfo(np.float16).max)


def topological_sort(graph: object) -> None:
    """Sort ``graph.node`` in place so every node comes after the producers of its inputs (Kahn's order,
    stable for nodes already in order); raise :class:`QuantizationError` on a cycle or a missing producer."""
    nodes = list(graph.node)  # type: ignore[attr-defined]
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}  # type: ignore[attr-defined]
    ordered, pending = [], nodes
    while pending:
        progressed, remaining = False, []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
                progressed = True
            else:
                remaining.append(node)
        if not progressed:
            missing = sorted({n for node in remaining for n in node.input if n not in available})[:5]
            raise QuantizationError("fp16 graph", "a DAG whose every input has a producer",
                                    f"{len(remaining)} node(s) waiting for {missing}")
        pending = remaining
    del graph.node[:]  # type: ignore[attr-defined]
    graph.node.extend(ordered)  # type: ignore[attr-defined]


def _check_constants(model: object) -> None:
    """Every FP16 constant must be finite: a -1e9 mask fill would have become -inf (0 * -inf = NaN)."""
    import onnx
    from onnx import numpy_helper

    tensors = list(model.graph.initializer)  # type: ignore[attr-defined]
    for node in model.graph.node:  # type: ignore[attr-defined]
        tensors += [a.t for a in node.attribute if a.type == onnx.AttributeProto.TENSOR]
    for tensor in tensors:
        if tensor.data_type == onnx.TensorProto.FLOAT16:
            values = numpy_helper.to_array(tensor)
            if values.size and not np.isfinite(values).all():
                raise QuantizationError(f"fp16 constant {tensor.name or '(node attribute)'}",
                                        f"finite values within +-{FP16_MAX:g}", "a value that overflowed float16")


def convert_fp16(fp32_path: str | Path, out_path: str | Path,
                 keep_fp32: Sequence[str] = DEFAULT_KEEP_FP32) -> dict[str, object]:
    """Write the FP16 graph of ``fp32_path`` to ``out_path`` (atomically); return a summary
    (ops kept in FP32, node counts)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from fusionrt.io import atomic_path

    fp32_path = Path(fp32_path)
    if not fp32_path.is_file():
        raise QuantizationError("fp32 graph", f"an ONNX file at {fp32_path}", "nothing")
    model = onnx.load(str(fp32_path))
    present = sorted({n.op_type for n in model.graph.node})
    converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=list(keep_fp32))
    topological_sort(converted.graph)
    _check_constants(converted)
    try:
        onnx.checker.check_model(converted, full_check=True)
    except Exception as exc:  # onnx raises ValidationError / InferenceError
        raise QuantizationError("fp16 graph", "a model passing onnx.checker", f"{type(exc).__name__}: {exc}") from exc
    with atomic_path(out_path) as tmp:
        onnx.save(converted, str(tmp))
    return {"keep_fp32": list(keep_fp32), "kept_present": [op for op in keep_fp32 if op in present],
            "nodes": len(converted.graph.node),
            "casts": sum(1 for n in converted.graph.node if n.op_type == "Cast")}
