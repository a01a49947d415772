"""Caption precisions: calibration from real decoding, fp16 / int8 / int8-cpu of both decoder graphs within the
caption budget (exact match and BLEU), `fusionrt calibrate` / `quantize` / `parity` on a caption bundle.

Small held-out counts here; the precision figures on 500+ scenes are benchmarks/caption_precision.py's."""

import json
import shutil

import numpy as np
import pytest

from fusionrt.bundle.manifest import Bundle
from fusionrt.bundle.transaction import update_manifest
from fusionrt.calibration import (
    BudgetExceededError,
    CalibrationError,
    QuantizationError,
    calibrate,
    quantize_fp16,
    quantize_int8,
)
from fusionrt.calibration import caption as caption_quant
from fusionrt.calibration.qdq import RECIPES, write_qdq
from fusionrt.calibration.ranges import Ranges
from fusionrt.caption.captioner import SHIPPED_CAPTION_BUNDLE, Captioner
from fusionrt.caption.steppers import CAPTION_STEP, CAPTION_VISUAL
from fusionrt.cli import main
from fusionrt.data.captions import caption_text
from fusionrt.data.world import generate_scene, render, split_seeds
from fusionrt.runtime.backends.onnxrt import session_from_onnx

HELDOUT = 16


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """A copy of the shipped caption bundle after `calibrate` and `quantize --precision int8` and `fp16` (the API
    the CLI calls), each measured on a few held-out scenes."""
    path = tmp_path_factory.mktemp("caption") / "bundle"
    shutil.copytree(SHIPPED_CAPTION_BUNDLE, path)
    record = calibrate(path, samples=24)
    int8 = quantize_int8(path, heldout_scenes=HELDOUT)
    fp16 = quantize_fp16(path, heldout_scenes=HELDOUT)
    return path, record, int8, fp16


def test_recorded_step_feeds_are_the_fed_values_at_every_past_length():
    """The recorded K/V are what the step graph was fed: each recorded visual K/V row is a row of the visual
    graph's output for its batch (views of released OrtValues once recorded garbage there, 3e38 and NaN)."""
    bundle = Bundle.open(SHIPPED_CAPTION_BUNDLE)
    visual_feeds, step_feeds = caption_quant.decoding_feeds(bundle, scenes=16)
    visual = session_from_onnx(bundle.graph_path(CAPTION_VISUAL))
    rows = [visual.run(["visual_key"], feed)[0] for feed in visual_feeds]
    lengths = {int(f["past_key"].shape[3]) for f in step_feeds}
    assert 0 in lengths and max(lengths) >= 20 and len(lengths) == max(lengths) + 1  # every P from 0 on
    batch, previous = -1, None
    for feed in step_feeds:
        if feed["past_key"].shape[3] == 0:
            batch += 1
        keys = rows[batch]
        for row in range(feed["visual_key"].shape[1]):
            assert any(np.array_equal(feed["visual_key"][:, row], keys[:, r]) for r in range(keys.shape[1]))
        assert np.isfinite(feed["past_key"]).all() and np.abs(feed["past_key"]).max(initial=0) < 50
        if previous is not None and feed["past_key"].shape[3] == previous["past_key"].shape[3] + 1 \
                and feed["past_key"].shape[1] == previous["past_key"].shape[1]:  # no row dropped: same prefix
            assert np.array_equal(feed["past_key"][:, :, :, :-1], previous["past_key"])
        previous = feed


def test_calibrate_and_quantize_publish_both_graphs_of_every_precision_within_budget(quantized):
    path, record, int8, fp16 = quantized
    assert record["file"] == caption_quant.RANGES_FILE and record["past_lengths"]["min"] == 0
    assert record["past_lengths"]["distinct"] >= 20
    bundle = Bundle.open(path)  # every file hash-checked
    for graph in (CAPTION_VISUAL, CAPTION_STEP):
        assert set(bundle.graph(graph).precisions) == {"fp32", "fp16", "int8", "int8-cpu"}
    for precision in ("fp16", "int8", "int8-cpu"):
        entry = bundle.manifest["quantization"][precision]
        assert entry["budget"]["exact_match_drop_points"] == 1.0 and entry["budget"]["bleu_drop_points"] == 1.0
        assert entry["heldout"]["scenes"] == HELDOUT and entry["heldout"]["passed"]
        assert entry["heldout"]["gates"]["exact_match_drop_points"]["value"] <= 1.0
    assert set(int8["precisions"]) == {"int8", "int8-cpu"} and set(fp16["precisions"]) == {"fp16"}
    # the quantized graphs really are quantized / half, and caption held-out scenes right
    import onnx

    ops = {n.op_type for n in onnx.load(str(bundle.graph_path(CAPTION_STEP, "int8-cpu"))).graph.node}
    assert "QuantizeLinear" in ops
    scenes = [generate_scene(s) for s in split_seeds("heldout", 6, start=900)]
    for precision in ("int8-cpu", "fp16"):
        captions = Captioner(path, precision).caption_many([render(s) for s in scenes])
        assert [c.replace(" ,", ",") for c in captions] == [caption_text(s).replace(" ,", ",") for s in scenes]


def test_out_of_budget_precision_is_refused_and_never_enters_the_bundle(tmp_path, monkeypatch):
    path = tmp_path / "bundle"
    shutil.copytree(SHIPPED_CAPTION_BUNDLE, path)
    real = caption_quant.caption_ranges

    def crushed(bundle, scenes, progress):  # ranges 1000x too narrow: every activation saturates
        ranges, record = real(bundle, scenes, progress)
        return {g: Ranges(r.method, {n: (lo / 1000, hi / 1000) for n, (lo, hi) in r.values.items()}, None, r.samples)
                for g, r in ranges.items()}, record

    monkeypatch.setattr(caption_quant, "caption_ranges", crushed)
    with pytest.raises(BudgetExceededError, match="int8-cpu") as error:
        caption_quant.quantize_caption(path, ("int8-cpu",), calibration_scenes=8, heldout_scenes=HELDOUT)
    assert not error.value.report["precisions"]["int8-cpu"]["passed"]
    bundle = Bundle.open(path)
    assert set(bundle.graph(CAPTION_STEP).precisions) == {"fp32"} and "quantization" not in bundle.manifest
    assert not any(p.name.startswith("caption_step.int8") for p in path.iterdir())


def test_calibrate_refuses_feeds_and_quantize_other_methods_for_a_caption_bundle(tmp_path):
    with pytest.raises(CalibrationError, match="caption"):
        calibrate(SHIPPED_CAPTION_BUNDLE, from_dir=tmp_path)
    with pytest.raises(QuantizationError, match="minmax for a caption bundle"):
        quantize_int8(SHIPPED_CAPTION_BUNDLE, method="percentile")


def test_cli_parity_gates_a_quantized_caption_bundle_and_fails_a_damaged_graph(quantized, tmp_path):
    path = quantized[0]
    report_path = tmp_path / "parity.json"
    assert main(["parity", str(path), "--candidate-precision", "int8-cpu", "--scenes", "16", "-q",
                 "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["precision"] == "int8-cpu" and set(report["gates"]) == {"exact_match_drop_points",
                                                                          "bleu_drop_points"}
    assert 0 < max(report["per_step_logits_max_abs"]) < 2.0  # quantized: not bit-exact, still close
    # A damaged int8-cpu step graph (ranges 30x too narrow) registered in a copy: parity must fail (exit 1)
    damaged = tmp_path / "damaged"
    shutil.copytree(path, damaged)
    ranges = caption_quant.load_caption_ranges(Bundle.open(path))[CAPTION_STEP]
    narrow = Ranges(ranges.method, {n: (lo / 30, hi / 30) for n, (lo, hi) in ranges.values.items()})
    write_qdq(Bundle.open(path).graph_path(CAPTION_STEP), damaged / "caption_step.int8-cpu.onnx", narrow,
              RECIPES["int8-cpu"])
    update_manifest(damaged, files=["caption_step.int8-cpu.onnx"])
    assert main(["parity", str(damaged), "--candidate-precision", "int8-cpu", "--scenes", "16", "-q",
                 "--json", str(report_path)]) == 1
    report = json.loads(report_path.read_text())
    assert not report["passed"] and not report["gates"]["exact_match_drop_points"]["passed"]
    assert report["token_identical"] < 1.0 and report["first_divergent_step"] is not None
    assert report["divergent_scenes"][0]["first_divergent_step"] >= report["first_divergent_step"]


def test_cli_parity_on_a_caption_bundle_takes_openvino_and_refuses_other_references(quantized, capsys):
    path = quantized[0]
    assert main(["parity", str(path), "--candidate", "openvino", "--candidate-precision", "fp16", "--scenes", "4",
                 "-q"]) == 0
    assert "openvino fp16" in capsys.readouterr().out
    assert main(["parity", str(path), "--reference", "onnxruntime", "--scenes", "4", "-q"]) == 2


def test_cli_quantize_on_a_caption_bundle_prints_the_caption_gates(tmp_path, capsys):
    path = tmp_path / "bundle"
    shutil.copytree(SHIPPED_CAPTION_BUNDLE, path)
    assert main(["quantize", str(path), "--precision", "fp16", "--heldout-scenes", "4", "-q"]) == 0
    line = capsys.readouterr().out
    assert line.startswith("fp16") and "exact match 100.00%" in line and "on 4 held-out scenes: within budget" in line
    assert Bundle.open(path).manifest["quantization"]["fp16"]["heldout"]["scenes"] == 4
