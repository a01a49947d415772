"""`fusionrt pipeline` on a caption checkpoint: export, calibrate, fp16, int8, engines (skipped here), parity with
caption gates, a light generation benchmark and the report; reruns reuse stages; a precision out of budget stops it
(exit 1)."""

import json

import pytest

from fusionrt.bundle.manifest import Bundle
from fusionrt.calibration import caption as caption_quant
from fusionrt.calibration.ranges import Ranges
from fusionrt.caption.steppers import CAPTION_STEP, CAPTION_VISUAL
from fusionrt.cli import main
from fusionrt.model.caption_checkpoint import SHIPPED_CAPTION_CHECKPOINT
from fusionrt.pipeline import GateFailed, PipelineConfig, run_pipeline

SMALL = ["--heldout-scenes", "16", "--calib-samples", "16", "-q"]  # small counts: the figures are benchmarks/'s


def _stages(path):
    return json.loads((path / "report.json").read_text())["this_run"]


def test_caption_pipeline_quantizes_gates_reuses_and_fails_out_of_budget(tmp_path, monkeypatch):
    out, junit = tmp_path / "caption", tmp_path / "junit.xml"
    assert main(["pipeline", "--checkpoint", str(SHIPPED_CAPTION_CHECKPOINT), "--out", str(out), *SMALL,
                 "--parity-scenes", "16", "--junit", str(junit)]) == 0
    bundle = Bundle.open(out)
    assert bundle.task == "caption"
    for graph in (CAPTION_VISUAL, CAPTION_STEP):
        assert set(bundle.graph(graph).precisions) == {"fp32", "fp16", "int8", "int8-cpu"}
    status = {s["name"]: s["status"] for s in _stages(out)}
    assert status["engines"] == "skipped" and status["int8"] == status["bench"] == "ran"
    parity = json.loads((out / "caption_parity.json").read_text())
    assert [r["precision"] for r in parity] == ["fp32", "fp16", "int8", "int8-cpu"]
    assert parity[0]["token_identical"] >= 0.995 and parity[0]["gates"]["logits_max_abs"]["passed"]
    assert all(r["passed"] and "exact_match_drop_points" in r["gates"] for r in parity[1:])
    assert "caption parity int8-cpu onnxruntime" in junit.read_text()
    bench = json.loads((out / "caption_bench.json").read_text())
    assert bench["rows"][-1]["label"].startswith("torch") and all(r["tokens_per_s_b8"] > 0 for r in bench["rows"])
    report = (out / "report.md").read_text()
    assert "Captioning: parity against fp32 PyTorch greedy" in report and "light benchmark" in report

    # A new calibration whose ranges are 1000x too narrow: the int8 budget gate fails, the stages it does not
    # depend on are reused.
    real = caption_quant.caption_ranges

    def crushed(bundle, scenes, progress):
        ranges, record = real(bundle, scenes, progress)
        return {g: Ranges(r.method, {n: (lo / 1000, hi / 1000) for n, (lo, hi) in r.values.items()}, None, r.samples)
                for g, r in ranges.items()}, record

    monkeypatch.setattr(caption_quant, "caption_ranges", crushed)
    config = PipelineConfig(out=out, checkpoint=SHIPPED_CAPTION_CHECKPOINT, heldout_scenes=16, calib_samples=8,
                            parity_scenes=16)
    with pytest.raises(GateFailed, match="caption budget int8") as failed:
        run_pipeline(config)
    status = {s.name: s.status for s in failed.value.result.stages}
    assert status == {"export": "reused", "calibrate": "ran", "fp16": "reused", "int8": "ran"}
