"""Mixed-precision graphs (FP16 or BF16) with float32 inputs and outputs, from a per-node keep-set.

Which nodes stay FP32 is decided from data (:mod:`fusionrt.calibration.autocast`); this module only converts:
onnxruntime's ``convert_float_to_float16`` with that node list (plus any op types the caller adds), then,
for BF16, every FP16 type retyped to BF16 with weights converted from their FP32 originals (so nothing is
clamped to FP16's range). The converter's output is not topologically sorted: onnxruntime's
``OnnxModel.graph_topological_sort`` sorts it before ``onnx.checker`` runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fusionrt.calibration.errors import QuantizationError
from fusionrt.io import atomic_path

DTYPES = ("float16", "bfloat16")
FP16_MAX = float(np.finfo(np.float16).max)


def topological_sort(graph: Any) -> None:
    """Sort ``graph.node`` in place (onnxruntime's sort); :class:`QuantizationError` if it is not a DAG."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    try:
        OnnxModel.graph_topological_sort(graph)
    except RuntimeError as exc:  # "Graph is not a DAG ... failed at node X"
        raise QuantizationError("mixed-precision graph", "a DAG whose every input has a producer", str(exc)) from exc


def _check_constants(model: Any) -> None:
    """Every FP16 constant must be finite: a -1e9 mask fill would have become -inf (0 * -inf = NaN)."""
    import onnx
    from onnx import numpy_helper

    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        tensors += [a.t for a in node.attribute if a.type == onnx.AttributeProto.TENSOR]
    for tensor in tensors:
        if tensor.data_type == onnx.TensorProto.FLOAT16:
            values = numpy_helper.to_array(tensor)
            if values.size and not np.isfinite(values).all():
                raise QuantizationError(f"fp16 constant {tensor.name or '(node attribute)'}",
                                        f"finite values within +-{FP16_MAX:g}", "a value that overflowed float16")


def _fp32_constants(fp32_model: Any) -> dict[str, Any]:
    """Name -> FP32 TensorProto of every initializer and Constant output of the source graph."""
    import onnx

    out = {i.name: i for i in fp32_model.graph.initializer}
    out.update({n.output[0]: a.t for n in fp32_model.graph.node if n.op_type == "Constant"
                for a in n.attribute if a.type == onnx.AttributeProto.TENSOR})
    return {k: v for k, v in out.items() if v.data_type == onnx.TensorProto.FLOAT}


def fold_cast_round_trips(model: Any, fp32_model: Any) -> int:
    """Remove the Casts onnxruntime's converter puts between two FP32-kept nodes, in place; return how many.

    Between two blocked nodes it emits ``fp32 -> Cast(fp16) -> Cast(fp32)``: a useless round trip that also
    rounds the value to FP16; the second Cast's readers are given the fp32 tensor. A constant read by a blocked
    node becomes ``Constant(fp16) -> Cast(fp32)``: that Cast becomes the FP32 constant of ``fp32_model``.
    Dead nodes are pruned afterwards (onnxruntime's ``OnnxModel.prune_graph``)."""
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel

    f32, halves = onnx.TensorProto.FLOAT, (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *inferred.graph.input)}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    producer = {o: n for n in model.graph.node for o in n.output}
    constants = _fp32_constants(fp32_model)
    outputs = {o.name for o in model.graph.output}

    def cast_to(node: Any) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    def rename_input(old: str, new: str) -> None:
        for user in model.graph.node:
            for k, name in enumerate(user.input):
                if name == old:
                    user.input[k] = new

    folded = 0
    for node in list(model.graph.node):
        parent = producer.get(node.input[0]) if node.input else None
        if cast_to(node) != f32 or parent is None:
            continue
        if parent.op_type == "Constant" and node.input[0] in constants:
            node.CopyFrom(onnx.helper.make_node("Constant", [], [node.output[0]], name=node.name,
                                                value=constants[node.input[0]]))
        elif cast_to(parent) in halves and types.get(parent.input[0]) == f32:
            source = parent.input[0]
            if node.output[0] not in outputs:
                rename_input(node.output[0], source)
            elif source in producer and source not in outputs:
                # a graph output: its fp32 producer writes it directly
                origin = producer[source]
                origin.output[list(origin.output).index(source)] = node.output[0]
                rename_input(source, node.output[0])
                node.output[0] = ""  # this Cast is dead now
                node.ClearField("input")
            else:
                continue
        else:
            continue
        folded += 1
    for dead in [n for n in model.graph.node if n.op_type == "Cast" and not n.input]:
        model.graph.node.remove(dead)
    OnnxModel(model).prune_graph()
    produced = {o for n in model.graph.node for o in n.output}
    stale = [v for v in model.graph.value_info if v.name not in produced]
    for info in stale:  # the converter's types of tensors that no longer exist
        model.graph.value_info.remove(info)
    return folded


def _retype_to_bfloat16(model: Any, fp32_model: Any) -> None:
    """Turn every FLOAT16 of the converted ``model`` into BFLOAT16, in place. Weights and constants are
    re-converted from ``fp32_model``'s values where the name matches (the FP16 copy was clamped to +-65504)."""
    import ml_dtypes
    import onnx
    from onnx import numpy_helper

    f16, bf16 = onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16
    originals = _fp32_constants(fp32_model)

    def converted(tensor: Any, key: str) -> Any:
        source = originals.get(key)
        values = numpy_helper.to_array(source if source is not None else tensor).astype(np.float32)
        return numpy_helper.from_array(values.astype(ml_dtypes.bfloat16), tensor.name)

    for i, tensor in enumerate(model.graph.initializer):
        if tensor.data_type == f16:
            model.graph.initializer[i].CopyFrom(converted(tensor, tensor.name))
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == f16:
                attr.t.CopyFrom(converted(attr.t, node.output[0]))
            elif node.op_type == "Cast" and attr.name == "to" and attr.i == f16:
                attr.i = bf16
    for info in (*model.graph.value_info, *model.graph.input, *model.graph.output):
        if info.type.tensor_type.elem_type == f16:
            info.type.tensor_type.elem_type = bf16


def convert_mixed_precision(fp32_path: str | Path, out_path: str | Path, *, dtype: str = "float16",
                            keep_fp32_nodes: Sequence[str] = (), keep_fp32_ops: Sequence[str] = ()) -> dict[str, Any]:
    """Write the ``dtype`` (``float16`` or ``bfloat16``) graph of ``fp32_path`` to ``out_path`` (atomically),
    keeping the nodes named in ``keep_fp32_nodes`` and every node of an op type in ``keep_fp32_ops`` in FP32;
    float32 inputs and outputs. Return a summary: dtype, kept nodes, node and Cast counts."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16


    if dtype not in DTYPES:
        raise QuantizationError("dtype", f"one of {list(DTYPES)}", repr(dtype))
    fp32_path = Path(fp32_path)
    if not fp32_path.is_file():
        raise QuantizationError("fp32 graph", f"an ONNX file at {fp32_path}", "nothing")
    model = onnx.load(str(fp32_path))
    names = {n.name for n in model.graph.node}
    unknown = sorted(set(keep_fp32_nodes) - names)
    if unknown:
        raise QuantizationError("keep_fp32_nodes", "node names of the fp32 graph", repr(unknown[:5]))
    kept = [n.name for n in model.graph.node if n.name in set(keep_fp32_nodes) or n.op_type in set(keep_fp32_ops)]
    # DEFAULT_OP_BLOCK_LIST: ops onnxruntime has no FP16 kernel for (none of them is float in our graphs).
    converted = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True,
                                         op_block_list=[*DEFAULT_OP_BLOCK_LIST, *keep_fp32_ops],
                                         node_block_list=list(keep_fp32_nodes))
    topological_sort(converted.graph)
    folded = fold_cast_round_trips(converted, model)
    _check_constants(converted)
    if dtype == "bfloat16":
        _retype_to_bfloat16(converted, model)
    try:
        onnx.checker.check_model(converted, full_check=True)
    except Exception as exc:  # onnx raises ValidationError / InferenceError
        raise QuantizationError(f"{dtype} graph", "a model passing onnx.checker",
                                f"{type(exc).__name__}: {exc}") from exc
    with atomic_path(out_path) as tmp:
        onnx.save(converted, str(tmp))
    return {"dtype": dtype, "fp32_nodes": kept, "keep_fp32_ops": list(keep_fp32_ops),
            "nodes": len(converted.graph.node), "casts": sum(1 for n in converted.graph.node if n.op_type == "Cast"),
            "round_trip_casts_removed": folded}
