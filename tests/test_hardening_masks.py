"""Masks that are not prefixes are refused at both doors (Session and calibration set), as the manifest says."""

import numpy as np
import pytest
from hardening_support import feed, shared_bundle

from fusionrt.calibration import CalibrationError
from fusionrt.calibration.samples import load_directory
from fusionrt.errors import InputError
from fusionrt.runtime import Bundle, Session


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return Bundle.open(shared_bundle(tmp_path_factory))


def test_the_manifest_declares_prefix_masks(bundle):
    inputs = {t["name"]: t for t in bundle.manifest["graphs"]["fusion"]["inputs"]}
    assert inputs["text_mask"]["mask"] == "prefix" and inputs["visual_mask"]["mask"] == "prefix"
    assert "mask" not in inputs["input_ids"]


@pytest.mark.parametrize("name", ["text_mask", "visual_mask"])
def test_left_padding_is_refused_by_the_session(bundle, name):
    session = Session(bundle)
    bad = feed()
    bad[name] = bad[name][:, ::-1].copy()  # row 1 becomes False True ... True: left-padded
    with pytest.raises(InputError, match=rf"{name}: expected a prefix mask per row.*row 1 with padding"):
        session.run(bad)


def test_prefix_masks_and_fully_masked_rows_still_run(bundle):
    session = Session(bundle)
    ok = feed()
    ok["visual_mask"][1] = False  # a row without regions is a (empty) prefix
    assert np.isfinite(session.run(ok)["logits"]).all()


def test_a_left_padded_calibration_feed_is_refused(bundle, tmp_path):
    rows = feed(batch=4, text=6, visual=3)
    rows["text_mask"][2] = [False, True, True, True, True, True]
    np.savez(tmp_path / "left.npz", **rows)
    with pytest.raises(CalibrationError, match=r"left\.npz.*text_mask: expected a prefix mask"):
        load_directory(tmp_path, bundle.graph("fusion"), min_samples=1)
