"""fusionrt bench: FLOP counting from the graph, block timing, peaks, the report and the CLI."""

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from fusionrt.bench import (
    BenchConfig,
    bench_feed,
    graph_cost,
    latency_stats,
    paper_peak,
    parse_shape,
    run_bench,
    time_blocks,
)
from fusionrt.errors import InputError


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return tiny_bundle


def test_cost_of_a_hand_made_graph(tmp_path):
    """MatMul with a batch dim, Gemm with transB and a Conv, each counted by hand."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"]),
             helper.make_node("Gemm", ["y2", "g"], ["z"], transB=1),
             helper.make_node("Conv", ["img", "k"], ["out"], pads=[1, 1, 1, 1])]
    inits = [helper.make_tensor("w", TensorProto.FLOAT, [4, 3], np.zeros(12)),
             helper.make_tensor("g", TensorProto.FLOAT, [5, 6], np.zeros(30)),
             helper.make_tensor("k", TensorProto.FLOAT, [8, 3, 3, 3], np.zeros(216))]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 7, 4]),
                     helper.make_tensor_value_info("y2", TensorProto.FLOAT, ["B", 6]),
                     helper.make_tensor_value_info("img", TensorProto.FLOAT, ["B", 3, 10, 10])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "z", "out")], inits)
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    cost = graph_cost(path, {"B": 2})
    matmul = 2 * (2 * 7) * 4 * 3
    gemm = 2 * 2 * 6 * 5
    conv = 2 * (2 * 8 * 10 * 10) * (3 * 3 * 3)
    assert cost.flops == matmul + gemm + conv
    assert cost.matmul_nodes == 3 and cost.unresolved_nodes == 0
    weights = 4 * (12 + 30 + 216)
    inputs = 4 * (2 * 7 * 4 + 2 * 6 + 2 * 3 * 10 * 10)
    outputs = 4 * (2 * 7 * 3 + 2 * 5 + 2 * 8 * 10 * 10)
    assert cost.bytes == weights + inputs + outputs


@pytest.mark.parametrize("shape", [(1, 5, 3), (4, 16, 8)])
def test_cost_of_the_exported_graph_matches_torch_flop_counter(bundle, tiny_model, shape):
    """The ONNX count at a concrete shape against torch's own FLOP counter on the module (independent)."""
    from torch.utils.flop_counter import FlopCounterMode

    from fusionrt.runtime import Bundle

    opened = Bundle.open(bundle)
    feed = bench_feed(opened, *shape)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        tiny_model(*(torch.from_numpy(feed[n]) for n in ("input_ids", "text_mask", "visual_feats", "visual_mask")))
    cost = graph_cost(opened.graph_path("fusion"), dict(zip("BTM", shape, strict=True)))
    assert cost.unresolved_nodes == 0
    assert cost.flops == counter.get_total_flops()


def test_time_blocks_never_alternates_call_by_call():
    order = []
    candidates = {name: (lambda n=name: order.append(n)) for name in ("a", "b", "c")}
    times = time_blocks(candidates, runs=25, warmup=2, block=10, pause=0.0)
    assert {k: len(v) for k, v in times.items()} == {"a": 25, "b": 25, "c": 25}
    timed = order[6:]  # after the warm-up calls
    runs, start = [], 0
    for i in range(1, len(timed) + 1):
        if i == len(timed) or timed[i] != timed[start]:
            runs.append(i - start)
            start = i
    # every block is one untimed wake-up call plus up to 10 timed calls, never a single call
    assert min(runs) >= 2 and max(runs) == 11
    # the rotation changes which engine runs first
    assert timed[0] != timed[sum(runs[:3])]


def test_latency_stats_percentiles():
    stats = latency_stats([float(v) for v in range(1, 101)])
    assert stats["p50_ms"] == pytest.approx(50.5) and stats["p99_ms"] == pytest.approx(99.01)
    assert stats["calls"] == 100 and stats["min_ms"] == 1.0


def test_paper_peak_states_its_inputs():
    peak = paper_peak(cores=2)
    assert peak.fp32_flops == pytest.approx(2 * peak.fp32_lanes * 2 * 2 * peak.clock_ghz * 1e9)
    assert any("FMA" in a for a in peak.assumptions) and any("clock" in a for a in peak.assumptions)


@pytest.mark.parametrize("text", ["8,32", "a,b,c", "0,4,4", "1,2,3,4"])
def test_parse_shape_refuses_bad_text(text):
    with pytest.raises(InputError, match="B,T,M"):
        parse_shape(text)


def test_run_bench_report(bundle, tiny_model):
    config = BenchConfig(shapes=[(1, 5, 3), (4, 16, 8)], runs=5, warmup=1, threads=1, concurrency=2,
                         torch_options={"module": tiny_model}, gemm_size=128)
    report = run_bench(bundle, config)
    rows = {(r["backend"], r["precision"], tuple(r["shape"])): r for r in report["rows"]}
    assert set(rows) == {(b, "fp32", s) for b in ("torch", "onnxruntime") for s in ((1, 5, 3), (4, 16, 8))}
    for shape in ((1, 5, 3), (4, 16, 8)):
        ort, ref = rows[("onnxruntime", "fp32", shape)], rows[("torch", "fp32", shape)]
        assert ort["p50_ms"] <= ort["p90_ms"] <= ort["p99_ms"]
        assert ort["speedup_vs_torch"] == pytest.approx(ref["p50_ms"] / ort["p50_ms"])
        assert ort["achieved_flops"] == pytest.approx(ort["flops"] / (ort["p50_ms"] / 1e3))
        assert ort["fraction_of_measured_peak"] > 0
    assert rows[("onnxruntime", "fp32", (4, 16, 8))]["flops"] > rows[("onnxruntime", "fp32", (1, 5, 3))]["flops"]
    assert report["peaks"]["measured_fp32_flops"] > 0 and report["peaks"]["paper"]["fp32_flops"] > 0
    assert report["concurrency"][0]["threads"] == 2 and report["concurrency"][0]["many_threads_calls_per_s"] > 0
    assert report["app"] is None  # a bare fusion bundle has no region encoder to run an app on


def test_cli_bench_refuses_a_shape_outside_the_bundle(bundle, capsys):
    from fusionrt.cli import main

    assert main(["bench", str(bundle), "--shapes", "1,99,4", "--runs", "5"]) == 2
    assert "shape T" in capsys.readouterr().err


def test_cli_bench_json(bundle, tmp_path, capsys, monkeypatch):
    from fusionrt.cli import main

    monkeypatch.setattr("fusionrt.bench.run.BenchConfig.gemm_size", 128)
    out = tmp_path / "bench.json"
    # the bundle's source is a module, not a checkpoint: torch cannot be loaded, and the bench says so
    assert main(["bench", str(bundle), "--shapes", "2,4,4", "--runs", "5", "--json", str(out), "-q"]) == 0
    report = json.loads(out.read_text())
    assert [r["backend"] for r in report["rows"]] == ["onnxruntime"]
    assert "torch fp32" in report["skipped"]
    assert "skipped torch fp32" in capsys.readouterr().out


def test_sweep_grows_each_dim_from_the_given_shapes():
    shapes = BenchConfig(shapes=[(8, 32, 16)], sweep=True).all_shapes()
    assert shapes[0] == (8, 32, 16) and len(shapes) == len(set(shapes))
    assert [s[1] for s in shapes if s[0] == 1 and s[2] == 8] == [4, 8, 16, 32]
    assert [s[0] for s in shapes if s[1:] == (16, 8)] == [1, 2, 4, 8, 16, 32]


def test_cli_bench_soak_passes_on_the_runtime_and_reports_rss(bundle, tmp_path):
    from fusionrt.cli import main

    out = tmp_path / "soak.json"
    assert main(["bench", str(bundle), "--soak", "200", "--soak-warmup", "20", "--json", str(out), "-q"]) == 0
    result = json.loads(out.read_text())
    assert result["calls"] == 200 and result["passed"] and abs(result["rss_growth"]) < result["max_growth"]
    assert result["rss_after_warmup"] > 0 and len(result["samples_mib"]) >= 1


def test_soak_catches_a_leaking_runner(bundle, monkeypatch, capsys):
    """A runner that keeps 1 MiB per call must fail the soak's gate (exit 1), or the soak proves nothing."""
    from fusionrt.cli import main
    from fusionrt.runtime.session import Session

    kept, real_run = [], Session.run

    def leaking_run(self, feed):
        kept.append(np.ones(1 << 18, dtype=np.float32))  # 1 MiB, never freed
        return real_run(self, feed)

    monkeypatch.setattr(Session, "run", leaking_run)
    assert main(["bench", str(bundle), "--soak", "200", "--soak-warmup", "10", "-q"]) == 1
    assert capsys.readouterr().out.startswith("FAIL: RSS")
