"""Every op of every TensorRT-bound graph of a bundle, with the dtypes it is used with, is in the TensorRT ONNX
parser's operator table (tests/data/onnx_tensorrt_operators.md: onnx/onnx-tensorrt docs/operators.md, branch 10.1-GA,
the floor for TensorRT 10.3; its source and commit are in its first line).

The table's "Supported Types" column names the types a node reads (a comparison lists FP32 and outputs BOOL); this
test checks the dtype of every input of each node against it, the output too for Cast (its target type) and Constant
(no input), and for QuantizeLinear and DequantizeLinear only their input ``x`` (the table lists FP32/FP16/BF16 for Q's
input and INT8/FP8/INT4 for DQ's input; their scales are FP32 and their zero points INT8 by construction).
A few restrictions of the table that our graphs could break are checked too: LayerNormalization with output Y only,
zero Q/DQ zero points, ReduceSum and Unsqueeze axes from a constant.
"""

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

TABLE = Path(__file__).parent / "data" / "onnx_tensorrt_operators.md"
ONNX_TO_TABLE = {onnx.TensorProto.FLOAT: "FP32", onnx.TensorProto.FLOAT16: "FP16", onnx.TensorProto.BFLOAT16: "BF16",
                 onnx.TensorProto.INT32: "INT32", onnx.TensorProto.INT64: "INT64", onnx.TensorProto.BOOL: "BOOL",
                 onnx.TensorProto.INT8: "INT8", onnx.TensorProto.UINT8: "UINT8", onnx.TensorProto.DOUBLE: "DOUBLE",
                 onnx.TensorProto.FLOAT8E4M3FN: "FP8", onnx.TensorProto.INT4: "INT4"}
X_ONLY = ("QuantizeLinear", "DequantizeLinear")


def parse_table(text: str) -> dict[str, set[str]]:
    """Operator -> supported types, for the rows marked supported (``Y``)."""
    table = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not re.fullmatch(r"[A-Z][A-Za-z0-9]*", cells[0]) or cells[0] == "Operator":
            continue
        if cells[1].startswith("Y"):
            table[cells[0]] = {t.strip() for t in cells[2].split(",") if t.strip()}
    return table


def unsupported(model: onnx.ModelProto, table: dict[str, set[str]]) -> list[str]:
    """Problems of ``model`` against ``table``: op missing, a dtype the op is not listed with, a broken restriction."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.input, *graph.output)}
    constants = {i.name: i for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            constants[node.output[0]] = node.attribute[0].t
    types.update({name: t.data_type for name, t in constants.items()})
    problems = []
    for node in graph.node:
        where = f"{node.op_type} {node.name}"
        if node.op_type not in table:
            problems.append(f"{where}: op not supported by the parser")
            continue
        names = [node.input[0]] if node.op_type in X_ONLY else [*node.input]
        if node.op_type in ("Cast", "Constant"):
            names += node.output
        for name in filter(None, names):
            dtype = ONNX_TO_TABLE.get(types.get(name), f"unknown type of {name}")
            if dtype not in table[node.op_type]:
                problems.append(f"{where}: {name} is {dtype}, parser lists {sorted(table[node.op_type])}")
        if node.op_type == "LayerNormalization" and len([o for o in node.output if o]) != 1:
            problems.append(f"{where}: outputs beyond Y")
        if node.op_type in X_ONLY and len(node.input) > 2:
            zero_point = constants.get(node.input[2])
            if zero_point is None or numpy_helper.to_array(zero_point).any():
                problems.append(f"{where}: zero point not a constant zero")
        if node.op_type in ("ReduceSum", "Unsqueeze") and len(node.input) > 1 and node.input[1] not in constants:
            problems.append(f"{where}: axes not a constant")
    return problems


@pytest.fixture(scope="module")
def table():
    return parse_table(TABLE.read_text())


@pytest.fixture(scope="module")
def bundle_graphs(tmp_path_factory):
    """fp32, fp16, int8 (TensorRT) and region encoder graphs of the shipped model, made as `quantize` makes them
    (without the held-out budget run, which tests/test_quantize.py covers)."""
    from fusionrt.calibration import (
        TENSORRT,
        calibrate,
        collect_ranges,
        convert_mixed_precision,
        fp32_keep_set,
        load_calibration,
        write_qdq,
    )
    from fusionrt.export import export_checkpoint
    from fusionrt.runtime import Bundle

    root = tmp_path_factory.mktemp("coverage")
    bundle = Bundle.open(export_checkpoint(None, root / "bundle"))
    calibrate(bundle.path, samples=32, min_samples=32)
    bundle = Bundle.open(bundle.path)
    fp32 = bundle.graph_path("fusion")
    convert_mixed_precision(fp32, root / "fp16.onnx", keep_fp32_nodes=list(fp32_keep_set(bundle.path)))
    write_qdq(fp32, root / "int8.onnx", collect_ranges(fp32, load_calibration(bundle, 32).feeds()), TENSORRT)
    return {"fp32": fp32, "fp16": root / "fp16.onnx", "int8": root / "int8.onnx",
            "region_encoder": bundle.graph_path("region_encoder")}


def test_table_is_the_one_read_and_parses(table):
    first = TABLE.read_text().splitlines()[0]
    assert "onnx/onnx-tensorrt" in first and "10.1-GA" in first and "96e781103cfc4adf4a6bb557e94bac8e693f6f4c" in first
    assert len(table) > 120
    assert table["MatMul"] == {"FP32", "FP16", "BF16"}
    assert table["DequantizeLinear"] == {"INT8", "FP8", "INT4"}
    assert "NonZero" in table and "Bernoulli" not in table  # a "N" row is not supported


@pytest.mark.parametrize("graph", ["fp32", "fp16", "int8", "region_encoder"])
def test_every_op_and_dtype_is_in_the_parser_table(bundle_graphs, table, graph):
    model = onnx.load(str(bundle_graphs[graph]))
    assert unsupported(model, table) == []
    used = {n.op_type for n in model.graph.node}
    if graph == "int8":
        assert {"QuantizeLinear", "DequantizeLinear"} <= used
    if graph == "fp16":
        assert any(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
                   for v in onnx.shape_inference.infer_shapes(model).graph.value_info)


def test_checker_catches_a_new_op_and_a_new_dtype(table):
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])
    i = helper.make_tensor_value_info("i", onnx.TensorProto.INT32, [3, 3])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])
    z = helper.make_tensor_value_info("z", onnx.TensorProto.INT32, [3, 3])
    nodes = [helper.make_node("Bernoulli", ["x"], ["y"], name="new_op"),  # "N" in the table
             helper.make_node("MatMul", ["i", "i"], ["z"], name="int_matmul")]  # MatMul on INT32: not listed
    model = helper.make_model(helper.make_graph(nodes, "g", [x, i], [y, z]),
                              opset_imports=[helper.make_opsetid("", 17)])
    problems = unsupported(model, table)
    assert any("new_op" in p and "not supported" in p for p in problems)
    assert any("int_matmul" in p and "INT32" in p for p in problems)
    zero = numpy_helper.from_array(np.array(3, np.int8), "zp")
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    q = helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="nonzero_zp")
    model = helper.make_model(helper.make_graph([q], "g", [x], [helper.make_tensor_value_info("q", 3, [2, 3])],
                                                initializer=[zero, scale]), opset_imports=[helper.make_opsetid("", 17)])
    assert any("nonzero_zp" in p and "zero point" in p for p in unsupported(model, table))
