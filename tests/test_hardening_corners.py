"""Export verification runs the declared max corner (max B, T, M together; the region encoder's max N)."""

import numpy as np

from fusionrt.export.api import verification_points
from fusionrt.export.contract import fusion_spec, max_corner, region_encoder_spec


def test_the_max_corner_is_among_the_verified_points():
    spec = fusion_spec(vocab_size=50, visual_dim=12, hidden=32, num_answers=7, max_text_len=32, max_visual_len=16,
                       max_batch=64)
    points = verification_points(spec)
    corner = [p for p in points if dict(p.sizes) == {"B": 64, "T": 32, "M": 16}]
    assert len(corner) == 1
    feed = corner[0].feed
    assert feed["input_ids"].shape == (64, 32) and feed["visual_feats"].shape == (64, 16, 12)
    assert feed["text_mask"][0].all() and feed["visual_mask"][0].all()  # row 0 uses every slot


def test_the_region_encoder_max_n_is_verified():
    spec = region_encoder_spec(crop_size=32, geometry_dim=5, feature_dim=69, max_regions=1024, opt_regions=16)
    assert max_corner(spec) == {"N": 1024}
    sizes = [p.sizes["N"] for p in verification_points(spec)]
    assert max(sizes) == 1024 and len(sizes) == len(set(sizes))
    big = next(p for p in verification_points(spec) if p.sizes["N"] == 1024)
    assert big.feed["crops"].shape == (1024, 3, 32, 32) and np.isfinite(big.feed["crops"]).all()


def test_a_bundle_with_a_small_max_batch_calibrates_and_measures(tmp_path):
    """Scene work is cut to the declared maxima: with --max-batch 4 (region encoder N <= 64, fusion B <= 4) the
    calibration scenes (116+ crops) and held-out batches (64 questions) used to be refused by the Session."""
    from fusionrt.calibration import HeldoutEvaluator, calibrate
    from fusionrt.export import export_checkpoint
    from fusionrt.runtime import Bundle

    bundle = export_checkpoint(None, tmp_path / "b", max_batch=4)
    opened = Bundle.open(bundle)
    assert opened.graph("fusion").dims["B"].max == 4 and opened.graph("region_encoder").dims["N"].max == 64
    assert calibrate(bundle, samples=40)["samples"] == 40
    evaluator = HeldoutEvaluator(Bundle.open(bundle), scenes=12)
    assert max(len(b["input_ids"]) for b in evaluator.batches) == 4
    measured = evaluator.measure_path(bundle / "fusion.onnx")
    assert measured.agreement == 1.0
