"""Precision of a match bundle: the pipeline takes the shipped matching checkpoint through export, calibration on
real pairs, fp16/int8/int8-cpu under retrieval budgets, ITM parity and a light bench (small held-out database);
`fusionrt parity` gates ITM parity (a damaged graph fails it); the budgets refuse to publish a miss; search and
match run the re-rank at every precision the bundle holds."""

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from fusionrt.bundle.manifest import Bundle
from fusionrt.bundle.transaction import update_manifest
from fusionrt.calibration.api import load_calibration, quantize_fp16
from fusionrt.calibration.errors import BudgetExceededError, CalibrationError
from fusionrt.cli import main
from fusionrt.data.world import generate_scene, render, split_seeds
from fusionrt.model.match_checkpoint import SHIPPED_MATCH_CHECKPOINT
from fusionrt.parity.match import MatchBudget, MatchEvaluator, MatchHeldout
from fusionrt.pipeline import PipelineConfig, run_pipeline
from fusionrt.runtime.session import Session
from fusionrt.search.searcher import Matcher

SIZES = {"match_scenes": 300, "match_queries": 30, "match_rerank": 32}
SMALL = ["--scenes", "300", "--queries", "30", "--rerank", "32", "-q"]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("match-pipeline") / "bundle"
    result = run_pipeline(PipelineConfig(out=out, checkpoint=SHIPPED_MATCH_CHECKPOINT, calib_samples=96,
                                         bench_runs=5, **SIZES))
    assert {s.name: s.status for s in result.stages} == {
        "export": "ran", "calibrate": "ran", "fp16": "ran", "int8": "ran", "engines": "skipped", "parity": "ran",
        "bench": "ran", "report": "ran"}
    return out


def test_pipeline_publishes_every_precision_with_budget_and_measurement(built):
    bundle = Bundle.open(built)
    assert bundle.task == "match"
    assert set(bundle.graph("fusion").precisions) == {"fp32", "fp16", "int8", "int8-cpu"}
    for graph in ("text_embed", "image_embed", "region_encoder"):  # not quantized: their fp32 file everywhere
        assert set(bundle.graph(graph).precisions.values()) == {f"{graph}.onnx"}
    quantization = bundle.manifest["quantization"]
    fp16 = quantization["fp16"]["heldout"]
    assert fp16["budget"]["max_ndcg_drop_points"] == 1.0 and fp16["passed"]
    assert fp16["database_scenes"] == 300 and fp16["queries"] == 30
    for precision in ("int8", "int8-cpu"):
        measured = quantization[precision]["graphs"][precision]["heldout"]
        assert measured["passed"] and measured["drop_points"]["ndcg10_two_stage"] <= 1.0
        assert 0.5 < measured["candidate"]["itm_roc_auc"] <= 1.0
    parity = json.loads((built / "match_parity.json").read_text())
    assert {r["precision"] for r in parity} == {"fp32", "fp16", "int8", "int8-cpu"}
    assert all(r["passed"] for r in parity)
    report = (built / "report.md").read_text()
    assert "| match budget int8-cpu | passed | nDCG@10 " in report and "ITM AUC" in report


def test_calibration_pairs_are_real_positives_and_negatives_in_many_shapes(built):
    bundle = Bundle.open(built)
    record = bundle.manifest["calibration"]
    assert record["samples"] == 96 and "calibration scenes" in record["source"]
    data = load_calibration(bundle)
    shapes = np.array(data.shapes())
    assert shapes[:, 0].sum() == 96
    assert len(set(shapes[:, 0])) >= 4 and len(set(shapes[:, 1])) >= 2 and len(set(shapes[:, 2])) >= 2
    with Session(bundle, "onnxruntime", "fusion") as fusion:
        logits = np.concatenate([fusion.run(feed)["logits"][:, 0] for feed in data.feeds()])
    # Real pairs: the model calls some of them matches and some not (random feeds would sit near one side).
    assert (logits > 0).sum() >= 10 and (logits < 0).sum() >= 30


def test_a_budget_miss_publishes_nothing(built, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(built, copy)
    bundle = Bundle.open(copy)
    evaluator = MatchEvaluator(bundle, heldout=MatchHeldout(bundle, 200, 20, 16))
    impossible = MatchBudget(max_ndcg_drop_points=-50.0, max_auc_drop_points=0.5, min_cosine=0.9,
                             grid_max_abs=None, grid_min_cosine=0.9)
    before = (copy / "manifest.json").read_bytes()
    with pytest.raises(BudgetExceededError, match="ndcg10_two_stage drop"):
        quantize_fp16(copy, budget=impossible, evaluator=evaluator)
    assert (copy / "manifest.json").read_bytes() == before
    with pytest.raises(CalibrationError, match="--heldout"):  # feeds are for custom bundles, not ignored here
        quantize_fp16(copy, heldout=tmp_path)


def _damage(bundle_dir: Path, precision: str) -> None:
    """Add noise to every float weight of one fusion graph and register the file again (hashes updated)."""
    name = Bundle.open(bundle_dir).graph("fusion").precisions[precision]
    model = onnx.load(bundle_dir / name)
    rng = np.random.default_rng(0)
    for initializer in model.graph.initializer:
        value = numpy_helper.to_array(initializer)
        if value.dtype == np.float32 and value.size > 16:
            noisy = value + rng.standard_normal(value.shape).astype(np.float32) * 0.5 * value.std()
            initializer.CopyFrom(numpy_helper.from_array(noisy, initializer.name))
    onnx.save(model, bundle_dir / name)
    update_manifest(bundle_dir, files=[name])


def test_parity_cli_passes_then_fails_on_a_damaged_graph(built, tmp_path, capsys):
    report = tmp_path / "parity.json"
    assert main(["parity", str(built), "--candidate-precision", "int8-cpu", *SMALL, "--json", str(report)]) == 0
    good = json.loads(report.read_text())
    assert good["heldout"]["agreement"] > 0.8 and len(good["grid"]) >= 18
    copy = tmp_path / "damaged"
    shutil.copytree(built, copy)
    _damage(copy, "fp32")
    assert main(["parity", str(copy), *SMALL, "--json", str(report)]) == 1
    bad = json.loads(report.read_text())
    assert any(f.startswith("grid") for f in bad["failures"])
    assert any("cosine" in f or "drop" in f for f in bad["failures"] if not f.startswith("grid"))
    assert "FAILED" not in capsys.readouterr().err


def test_search_and_match_rerank_at_every_precision(built, tmp_path, capsys):
    pytest.importorskip("qdrant_client")
    from test_search_index import write_scenes  # a sibling test module: imported after its extra's check

    directory = tmp_path / "scenes"
    paths = write_scenes(directory, split_seeds("heldout", 40, start=600_000))
    index = str(tmp_path / "index")
    assert main(["index", "add", str(directory), "--index", index, "--bundle", str(built), "-q"]) == 0
    capsys.readouterr()
    top: dict[str, list[str]] = {}
    for precision in ("fp32", "fp16", "int8", "int8-cpu"):
        assert main(["search", index, "a small red circle", "--rerank", "20", "--bundle", str(built),
                     "--precision", precision, "--json", "-"]) == 0
        top[precision] = [r["path"] for r in json.loads(capsys.readouterr().out)["results"]][:5]
        assert main(["match", next(iter(paths)), "a small red circle", "--bundle", str(built),
                     "--precision", precision, "--json", "-"]) == 0
        assert 0.0 <= json.loads(capsys.readouterr().out)["score"] <= 1.0
    for precision in ("fp16", "int8", "int8-cpu"):
        assert len(set(top[precision]) & set(top["fp32"])) >= 3
    assert main(["search", index, "a small red circle", "--bundle", str(built), "--precision", "bf16"]) == 2
    assert "precision" in capsys.readouterr().err


def test_matcher_runs_each_precision_on_openvino_as_on_onnxruntime(built):
    pytest.importorskip("openvino")
    image = render(generate_scene(split_seeds("heldout", 1, start=700_000)[0]))
    texts = ("a red object", "a large blue square", "two circles")
    for precision in ("fp16", "int8-cpu"):
        scores = {}
        for backend in ("onnxruntime", "openvino"):
            matcher = Matcher(built, backend, precision)
            try:
                scores[backend] = [matcher.match(image, text) for text in texts]
            finally:
                matcher.close()
        assert scores["openvino"] == pytest.approx(scores["onnxruntime"], abs=2e-3)
