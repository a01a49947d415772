"""FLOPs and bytes of an ONNX graph at a concrete shape, counted from the graph itself.

The graph's dynamic dims are pinned to the sizes asked for, ``onnx.shape_inference`` (with data
propagation, so Reshape targets computed from Shape ops resolve) gives every tensor's shape, and
each MatMul / MatMulInteger / Gemm / Conv contributes its multiply-adds (2 FLOPs each). Element-wise
work (Softmax, LayerNorm, GELU ...) is left out: it is a few percent of the MatMul count here and
not what a GEMM peak measures. Bytes are the compulsory traffic: every initializer read once plus
the graph's inputs and outputs (a lower bound; activations that stay in cache are not counted).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MATMUL_OPS = ("MatMul", "MatMulInteger", "Gemm", "Conv", "QLinearMatMul", "QLinearConv")


@dataclass(frozen=True)
class GraphCost:
    """FLOPs (MatMul-like nodes only), compulsory bytes, and the count of nodes whose shape stayed unknown."""

    flops: int
    bytes: int
    matmul_nodes: int
    unresolved_nodes: int

    @property
    def intensity(self) -> float:
        """FLOPs per compulsory byte."""
        return self.flops / self.bytes if self.bytes else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"flops": self.flops, "bytes": self.bytes, "matmul_nodes": self.matmul_nodes,
                "unresolved_nodes": self.unresolved_nodes, "flops_per_byte": self.intensity}


def _pin_dims(model: Any, sizes: Mapping[str, int]) -> None:
    for value in (*model.graph.input, *model.graph.output):
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in sizes:
                dim.dim_value = int(sizes[dim.dim_param])


def _shape(value_info: Any) -> tuple[int, ...] | None:
    dims = value_info.type.tensor_type.shape.dim
    if not value_info.type.tensor_type.HasField("shape"):
        return None
    out = []
    for dim in dims:
        if not dim.HasField("dim_value"):
            return None
        out.append(int(dim.dim_value))
    return tuple(out)


def _element_bytes(elem_type: int) -> int:
    from onnx import helper

    return int(np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize)


def _node_flops(op: str, shapes: list[tuple[int, ...] | None], attrs: Mapping[str, Any]) -> int | None:
    """Multiply-adds x 2 of one node, or None if a needed shape is unknown."""
    if op in ("QLinearMatMul",):
        shapes = [shapes[0], shapes[3]]
    if op in ("QLinearConv",):
        shapes = [shapes[0], shapes[3]]
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul"):
        a, b = shapes[0], shapes[1]
        if a is None or b is None:
            return None
        a2 = (1, *a) if len(a) == 1 else a
        b2 = (*b, 1) if len(b) == 1 else b
        m, k, n = a2[-2], a2[-1], b2[-1]
        batch = np.broadcast_shapes(a2[:-2], b2[:-2]) if len(a2) > 2 or len(b2) > 2 else ()
        return 2 * int(np.prod(batch, dtype=np.int64)) * m * k * n
    if op == "Gemm":
        a, b = shapes[0], shapes[1]
        if a is None or b is None:
            return None
        m, k = (a[1], a[0]) if attrs.get("transA") else (a[0], a[1])
        n = b[0] if attrs.get("transB") else b[1]
        return 2 * m * k * n
    if op in ("Conv", "QLinearConv"):
        x, w = shapes[0], shapes[1]
        if x is None or w is None or len(x) < 3:
            return None
        # Output spatial size needs strides/pads: taken from the inferred output shape by the caller.
        return None
    return None


def graph_cost(onnx_path: str | Path, sizes: Mapping[str, int]) -> GraphCost:
    """Count FLOPs and bytes of the graph at ``onnx_path`` with its dynamic dims set to ``sizes``."""
    import onnx
    from onnx import helper, numpy_helper, shape_inference

    model = onnx.load(str(onnx_path))
    _pin_dims(model, sizes)
    inferred = shape_inference.infer_shapes(model, data_prop=True)
    graph = inferred.graph
    shapes: dict[str, tuple[int, ...] | None] = {}
    for value in (*graph.input, *graph.value_info, *graph.output):
        shapes[value.name] = _shape(value)
    weight_bytes = 0
    for init in graph.initializer:
        shapes[init.name] = tuple(init.dims)
        weight_bytes += int(np.prod(init.dims, dtype=np.int64)) * _element_bytes(init.data_type)
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    array = numpy_helper.to_array(attr.t)
                    shapes[node.output[0]] = tuple(array.shape)
                    weight_bytes += array.nbytes
    io_bytes = 0
    for value in (*graph.input, *graph.output):
        shape = shapes.get(value.name)
        if shape is not None:
            io_bytes += int(np.prod(shape, dtype=np.int64)) * _element_bytes(value.type.tensor_type.elem_type)
    flops = matmuls = unresolved = 0
    for node in graph.node:
        if node.op_type not in MATMUL_OPS:
            continue
        matmuls += 1
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        node_shapes = [shapes.get(name) if name else None for name in node.input]
        if node.op_type in ("Conv", "QLinearConv"):
            w = node_shapes[3 if node.op_type == "QLinearConv" else 1]
            y = shapes.get(node.output[0])
            if w is None or y is None:
                unresolved += 1
                continue
            # every output element: (C_in / group) x kernel multiply-adds
            flops += 2 * int(np.prod(y, dtype=np.int64)) * int(np.prod(w[1:], dtype=np.int64))
            continue
        count = _node_flops(node.op_type, node_shapes, attrs)
        if count is None:
            unresolved += 1
        else:
            flops += count
    return GraphCost(flops=int(flops), bytes=int(weight_bytes + io_bytes), matmul_nodes=matmuls,
                     unresolved_nodes=unresolved)
