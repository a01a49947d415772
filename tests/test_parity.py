"""Parity: metrics, grids, comparisons that must fail, real-scene parity and the ``fusionrt parity`` CLI."""

import json
import math
import shutil

import numpy as np
import pytest
import torch

from fusionrt.cli import main
from fusionrt.data.world import ANSWERS
from fusionrt.export import export_checkpoint
from fusionrt.export.contract import fusion_spec, region_encoder_spec
from fusionrt.model import Checkpoint, FusionConfig, FusionModel, RegionEncoder, save_checkpoint
from fusionrt.parity import Tolerance, array_metrics, compare_grid, grid_points, json_safe, run_parity
from fusionrt.runtime import Bundle, Session
from fusionrt.runtime.bundle import sha256_file

SPEC = fusion_spec(vocab_size=50, visual_dim=12, hidden=32, num_answers=7, max_text_len=16, max_visual_len=8,
                   max_batch=64)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, question_encoder):
    """A small random checkpoint (real tokenizer, region encoder and answer list) exported once."""
    torch.manual_seed(0)
    config = FusionConfig(vocab_size=question_encoder.vocab_size, hidden=32, layers=2, heads=4, ffn=64)
    root = tmp_path_factory.mktemp("parity")
    save_checkpoint(Checkpoint(FusionModel(config).eval(), RegionEncoder().eval(), question_encoder, list(ANSWERS)),
                    root / "checkpoint")
    return export_checkpoint(root / "checkpoint", root / "bundle")


def test_array_metrics_values():
    m = array_metrics(np.array([1.0, -2.0, 0.0]), np.array([1.5, -2.0, 0.0]))
    assert m["max_abs"] == 0.5 and m["mean_abs"] == pytest.approx(0.5 / 3) and m["max_rel"] == 0.5
    assert m["cosine"] == pytest.approx(5.5 / (math.sqrt(5) * math.sqrt(6.25)))
    assert array_metrics(np.zeros(4), np.zeros(4))["cosine"] == 1.0
    assert array_metrics(np.zeros((2, 3)), np.zeros((3, 2)))["problem"].startswith("shape [3, 2] instead of [2, 3]")
    nan = array_metrics(np.array([np.nan, 1.0]), np.array([np.nan, 1.0]))
    assert nan["problem"].startswith("non-finite") and nan["max_abs"] == math.inf  # NaN == NaN is no agreement


def test_fusion_grid_covers_sizes_padding_and_fully_masked_rows():
    points = grid_points(SPEC)
    assert len(points) == 27
    assert {p.sizes["B"] for p in points} == {1, 2, 8}
    assert {p.sizes["T"] for p in points} == {1, 9, 16} and {p.sizes["M"] for p in points} == {1, 5, 8}
    big = next(p for p in points if p.sizes == {"B": 8, "T": 16, "M": 8})
    text, visual = big.feed["text_mask"], big.feed["visual_mask"]
    assert text[0].all() and visual[0].all()  # a full row
    assert not visual[-1].any() and not text[-2].any() and not (text[-3].any() or visual[-3].any())
    assert ((text.sum(1) > 0) & (text.sum(1) < 16)).any()  # partially padded rows
    assert (big.feed["input_ids"][~text] == 0).all() and (big.feed["visual_feats"][~visual] == 0).all()


def test_region_encoder_grid_is_capped():
    spec = region_encoder_spec(crop_size=32, geometry_dim=5, feature_dim=69, max_regions=1024, opt_regions=16)
    points = grid_points(spec)
    assert [p.sizes["N"] for p in points] == [1, 33, 64]
    assert points[0].feed["crops"].shape == (1, 3, 32, 32) and points[0].feed["crops"].dtype == np.float32


class _Offset:
    """A candidate that is off by ``delta`` on the logits of batches of 8."""

    def __init__(self, inner, delta):
        self.inner, self.delta = inner, delta

    def run(self, feed):
        out = dict(self.inner.run(feed))
        if feed["input_ids"].shape[0] == 8:
            out["logits"] = out["logits"] + np.float32(self.delta)
        return out


class _Failing:
    def run(self, feed):
        raise RuntimeError("engine lost")


def test_compare_grid_reports_points_over_tolerance(bundle):
    session = Session(bundle)
    points = grid_points(session.runner.graph, sizes={"B": (1, 8), "T": (3,), "M": (2,)})
    clean = compare_grid("fusion", session, session, points)
    assert clean.failures(Tolerance()) == [] and clean.summary()["logits"]["max_abs"] == 0.0
    off = compare_grid("fusion", session, _Offset(session, 1e-3), points)
    failures = off.failures(Tolerance(max_abs=1e-4))
    assert failures == ["fusion [B=8 T=3 M=2] logits: max abs error 0.001 > 0.0001"]
    broken = compare_grid("fusion", session, _Failing(), points)
    assert broken.failures(Tolerance())[0] == "fusion [B=1 T=3 M=2]: candidate failed: RuntimeError: engine lost"


def test_run_parity_on_grid_and_real_scenes(bundle):
    report = run_parity(bundle, "torch", "onnxruntime", scenes=12)
    assert report.passed, report.failures
    assert [g.graph for g in report.grids] == ["fusion", "region_encoder"]
    scenes = report.scenes
    assert scenes.scenes == 12 and scenes.questions > 12
    assert set(scenes.metrics) == {"feats", "hidden", "logits"}
    assert scenes.agreement == 1.0 and scenes.accuracy["reference"] == scenes.accuracy["candidate"]
    table = report.table()
    assert "fusion grid (27 shapes)" in table and "argmax agreement 1.0000" in table and table.endswith("PASSED")
    data = json.loads(json.dumps(json_safe(report.to_dict())))
    assert data["passed"] is True and data["reference"]["backend"] == "torch"


def test_run_parity_compares_precisions(bundle, tmp_path):
    """Any precision the manifest lists can be a side (fp16/int8 come later; here an identical copy)."""
    copy = shutil.copytree(bundle, tmp_path / "b")
    (copy / "fusion.copy.onnx").write_bytes((copy / "fusion.onnx").read_bytes())
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["graphs"]["fusion"]["precisions"]["copy"] = "fusion.copy.onnx"
    manifest["graphs"].pop("region_encoder")
    manifest["files"]["fusion.copy.onnx"] = {"sha256": sha256_file(copy / "fusion.copy.onnx"),
                                             "bytes": (copy / "fusion.copy.onnx").stat().st_size}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    report = run_parity(Bundle.open(copy), "onnxruntime", "onnxruntime", candidate_precision="copy", scenes=0)
    assert report.passed and report.grids[0].summary()["logits"]["max_abs"] == 0.0
    assert report.candidate["precision"] == "copy" and report.scenes is None


def _strict(text):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def test_cli_parity_passes_and_writes_json(bundle, tmp_path, capsys):
    out = tmp_path / "parity.json"
    assert main(["parity", str(bundle), "--scenes", "6", "--json", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "torch fp32 (reference) vs onnxruntime fp32 (candidate)" in printed and "PASSED" in printed
    data = _strict(out.read_text())
    assert data["passed"] is True and data["scenes"]["scenes"] == 6
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically: no temp file left


def test_cli_parity_exits_non_zero_when_a_tolerance_is_exceeded(bundle, tmp_path, capsys):
    out = tmp_path / "parity.json"
    assert main(["parity", str(bundle), "--scenes", "0", "--atol", "0", "--json", str(out), "--quiet"]) == 1
    printed = capsys.readouterr().out
    assert "FAILED" in printed and "max abs error" in printed
    data = _strict(out.read_text())
    assert data["passed"] is False and data["failures"]


def test_cli_parity_on_a_damaged_bundle_is_an_error(bundle, tmp_path, capsys):
    copy = shutil.copytree(bundle, tmp_path / "b")
    (copy / "region_encoder.onnx").unlink()
    assert main(["parity", str(copy), "--scenes", "0", "--quiet"]) == 2
    assert "region_encoder.onnx: expected a file of the bundle" in capsys.readouterr().err
