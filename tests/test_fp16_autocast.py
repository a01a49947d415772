"""The data-driven FP32 keep-set (range, squares, initializer and reduction-depth rules) and the FP16/BF16 converter,
on a small hand-built graph whose activations are known in advance."""

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from fusionrt.calibration import QuantizationError, Thresholds, convert_mixed_precision
from fusionrt.calibration.autocast import collect_activation_stats, fp32_nodes


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    """x [N,4] -> scale (x*1000: |y| > 512) -> relu -> ...; s [N,8] -> LayerNorm (|s| ~300: its square overflows);
    w [N,4096] -> ReduceSum over 4096 (deeper than 2048); big: x * 1e5 (an initializer over 65504)."""
    inits = [numpy_helper.from_array(np.array(1000.0, np.float32), "thousand"),
             numpy_helper.from_array(np.ones(8, np.float32), "gamma"),
             numpy_helper.from_array(np.zeros(8, np.float32), "beta"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1"),
             numpy_helper.from_array(np.array(1e5, np.float32), "huge"),
             numpy_helper.from_array(np.full((4, 4), 0.5, np.float32), "weight")]
    nodes = [helper.make_node("Mul", ["x", "thousand"], ["scaled"], name="scale"),
             helper.make_node("Relu", ["scaled"], ["relu_out"], name="relu_after_scale"),
             helper.make_node("MatMul", ["x", "weight"], ["mm"], name="small_matmul"),
             helper.make_node("Relu", ["mm"], ["small_out"], name="small_relu"),
             helper.make_node("LayerNormalization", ["s", "gamma", "beta"], ["normed"], name="layernorm"),
             helper.make_node("ReduceSum", ["w", "axis1"], ["summed"], name="deep_sum"),
             helper.make_node("Mul", ["x", "huge"], ["big"], name="huge_weight")]
    graph = helper.make_graph(
        nodes, "autocast", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
                            helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", 8]),
                            helper.make_tensor_value_info("w", TensorProto.FLOAT, ["N", 4096])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
         for n in ("relu_out", "small_out", "normed", "summed", "big")], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path_factory.mktemp("autocast") / "g.onnx"
    onnx.save(model, str(path))
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.uniform(-0.9, 0.9, (2, 4)).astype(np.float32),
              "s": rng.uniform(-300, 300, (2, 8)).astype(np.float32),
              "w": rng.uniform(0, 1e-3, (2, 4096)).astype(np.float32)} for _ in range(4)]
    return path, feeds


def test_each_rule_keeps_exactly_its_node(graph):
    path, feeds = graph
    stats = collect_activation_stats(path, feeds)
    assert stats.samples == 4 and 512 < stats.max_abs["scaled"] <= 900
    keep = fp32_nodes(path, stats)
    assert set(keep) == {"scale", "relu_after_scale", "layernorm", "deep_sum", "huge_weight"}
    assert "output scaled" in keep["scale"] and "input scaled" in keep["relu_after_scale"]
    assert "square_max" in keep["layernorm"] and "reduction depth 4096" in keep["deep_sum"]
    assert "init_max" in keep["huge_weight"]
    # Looser thresholds keep less: the rules really read the thresholds.
    loose = fp32_nodes(path, stats, Thresholds(data_max=1e6, square_max=400.0, init_max=1e6,
                                               max_reduction_depth=8192))
    assert loose == {}


def test_kept_nodes_stay_fp32_and_the_rest_runs_fp16(graph, tmp_path):
    path, feeds = graph
    keep = list(fp32_nodes(path, collect_activation_stats(path, feeds)))
    summary = convert_mixed_precision(path, tmp_path / "fp16.onnx", keep_fp32_nodes=keep)
    model = onnx.load(str(tmp_path / "fp16.onnx"))
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *inferred.graph.output)}
    out_type = {n.name: types[n.output[0]] for n in model.graph.node}
    for name in keep:
        assert out_type[name] == TensorProto.FLOAT, name
    assert out_type["small_matmul"] == out_type["small_relu"] == TensorProto.FLOAT16  # not kept: converted
    # Only the fp16 part needs Casts (x in, small_out out): no fp32 -> fp16 -> fp32 round trip is left.
    assert summary["casts"] == 2
    assert summary["fp32_nodes"] == [n for n in ("scale", "relu_after_scale", "layernorm", "deep_sum", "huge_weight")]
    session = onnxruntime.InferenceSession(str(tmp_path / "fp16.onnx"), providers=["CPUExecutionProvider"])
    reference = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for out, ref in zip(session.run(None, feeds[0]), reference.run(None, feeds[0]), strict=True):
        assert np.isfinite(out).all()
        np.testing.assert_allclose(out, ref, rtol=2e-3, atol=2e-3)
    # Without the keep-set the same graph breaks in fp16: the rules were needed.
    convert_mixed_precision(path, tmp_path / "all.onnx", keep_fp32_nodes=[])
    broken = onnxruntime.InferenceSession(str(tmp_path / "all.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in broken.get_outputs()]
    outs = dict(zip(names, broken.run(None, feeds[0]), strict=True))
    refs = dict(zip(names, reference.run(None, feeds[0]), strict=True))
    assert not np.allclose(outs["big"], refs["big"], rtol=1e-2)  # 1e5 * x overflows fp16


def test_bfloat16_reuses_the_keep_set_with_unclamped_weights(graph, tmp_path):
    path, _ = graph
    summary = convert_mixed_precision(path, tmp_path / "bf16.onnx", dtype="bfloat16", keep_fp32_nodes=["layernorm"])
    assert summary["dtype"] == "bfloat16" and summary["fp32_nodes"] == ["layernorm"]
    model = onnx.load(str(tmp_path / "bf16.onnx"))
    onnx.checker.check_model(model, full_check=True)
    inits = {i.name: i for i in model.graph.initializer}
    assert inits["huge"].data_type == TensorProto.BFLOAT16
    assert float(numpy_helper.to_array(inits["huge"]).astype(np.float32)) == pytest.approx(1e5, rel=1e-2)  # not 65504
    assert not any(i.data_type == TensorProto.FLOAT16 for i in model.graph.initializer)
    assert not any(a.name == "to" and a.i == TensorProto.FLOAT16 for n in model.graph.node for a in n.attribute)


def test_bad_arguments_are_clear_errors(graph, tmp_path):
    path, _ = graph
    with pytest.raises(QuantizationError, match="dtype"):
        convert_mixed_precision(path, tmp_path / "x.onnx", dtype="float8")
    with pytest.raises(QuantizationError, match="keep_fp32_nodes"):
        convert_mixed_precision(path, tmp_path / "x.onnx", keep_fp32_nodes=["no such node"])
    assert not (tmp_path / "x.onnx").exists()
