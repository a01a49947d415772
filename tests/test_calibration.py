"""Calibration sets and ranges: every bad input raises a typed error naming what was expected.

Uses a tiny random fusion model (fast to export and quantize); the shipped model is in test_quantize.py.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fusionrt.calibration import CalibrationError, QuantizationError, collect_ranges
from fusionrt.calibration.qdq import CPU, TENSORRT, quantizable_nodes, write_qdq
from fusionrt.calibration.ranges import Ranges, parse_trt_cache, trt_calibration_cache, validate_ranges
from fusionrt.calibration.samples import CalibrationSet, load_directory, load_npz, validate
from fusionrt.calibration.sensitivity import exclude_for_budget
from fusionrt.errors import FusionrtError
from fusionrt.export import export_onnx
from fusionrt.model import FusionConfig, FusionModel
from fusionrt.parity import fusion_feed
from fusionrt.parity.budgets import Budget, Measurement
from fusionrt.runtime import Bundle

TINY = FusionConfig(vocab_size=50, hidden=32, layers=2, heads=4, ffn=64, visual_dim=12, num_answers=7,
                    max_text_len=16, max_visual_len=8)


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    torch.manual_seed(0)
    model = FusionModel(TINY).eval()
    return Bundle.open(export_onnx(model, tmp_path_factory.mktemp("cal") / "bundle", vocab_size=50, visual_dim=12,
                                   max_text_len=16, max_visual_len=8, max_batch=16))


def samples(spec, count=40, seed=0):
    """``count`` single-row feeds of varied lengths, padded into one set."""
    rng = np.random.default_rng(seed)
    rows = [fusion_feed(spec, 1, int(rng.integers(2, 17)), int(rng.integers(1, 9)), rng) for _ in range(count)]
    from fusionrt.calibration.samples import _pad_rows

    return _pad_rows(rows)


def test_a_valid_set_passes_and_yields_each_sample_at_its_own_length(tiny_bundle):
    arrays = samples(tiny_bundle.graph("fusion"))
    validate(arrays, tiny_bundle.graph("fusion"))
    data = CalibrationSet(**arrays)
    shapes = {(f["input_ids"].shape[1], f["visual_feats"].shape[1]) for f in data.feeds()}
    assert len(shapes) > 10  # variable shapes reach the calibrator
    assert all(f["text_mask"].all() and f["visual_mask"].all() for f in data.feeds())


def test_too_few_samples(tiny_bundle):
    arrays = samples(tiny_bundle.graph("fusion"), count=5)
    with pytest.raises(CalibrationError, match="at least 32 samples, received 5"):
        validate(arrays, tiny_bundle.graph("fusion"))


@pytest.mark.parametrize(("key", "change", "message"), [
    ("visual_feats", lambda a: a.astype(np.float64), "dtype float32"),
    ("input_ids", lambda a: a.astype(np.int32), "dtype int64"),
    ("text_mask", lambda a: a.astype(np.int64), "dtype bool"),
    ("visual_feats", lambda a: a[..., :5], "last dim 12"),
    ("visual_feats", lambda a: a[0], "rank 3"),
    ("visual_mask", lambda a: a[:, :1], "shape"),
    ("input_ids", lambda a: a + 1000, "values in"),
    ("visual_feats", lambda a: np.where(a == a.max(), np.nan, a).astype(np.float32), "finite"),
])
def test_wrong_shape_dtype_or_values(tiny_bundle, key, change, message):
    arrays = samples(tiny_bundle.graph("fusion"))
    arrays[key] = change(arrays[key])
    with pytest.raises(CalibrationError, match=message) as info:
        validate(arrays, tiny_bundle.graph("fusion"))
    assert key in str(info.value) or "rows" in str(info.value)


def test_missing_key(tiny_bundle):
    arrays = samples(tiny_bundle.graph("fusion"))
    del arrays["visual_mask"]
    with pytest.raises(CalibrationError, match="visual_mask"):
        validate(arrays, tiny_bundle.graph("fusion"))


def test_user_directory_of_npz_feeds(tiny_bundle, tmp_path):
    spec = tiny_bundle.graph("fusion")
    rng = np.random.default_rng(1)
    for i in range(12):  # batched files of different shapes: 12 x 3 = 36 samples
        np.savez(tmp_path / f"feed{i}.npz", **fusion_feed(spec, 3, int(rng.integers(2, 17)), 4, rng))
    data = load_directory(tmp_path, spec)
    assert len(data) == 36 and data.visual_feats.dtype == np.float32
    with pytest.raises(CalibrationError, match="at least 40 samples"):
        load_directory(tmp_path, spec, min_samples=40)


def test_user_directory_faults(tiny_bundle, tmp_path):
    spec = tiny_bundle.graph("fusion")
    with pytest.raises(CalibrationError, match="a directory of npz feeds"):
        load_directory(tmp_path / "nowhere", spec)
    with pytest.raises(CalibrationError, match="no npz file"):
        load_directory(tmp_path, spec)
    np.savez(tmp_path / "objects.npz", input_ids=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CalibrationError, match="npz file of numeric arrays"):
        load_npz(tmp_path / "objects.npz")  # never unpickled
    (tmp_path / "objects.npz").unlink()
    feed = fusion_feed(spec, 2, 4, 3, np.random.default_rng(0))
    feed["visual_feats"] = feed["visual_feats"][..., :3]
    np.savez(tmp_path / "bad.npz", **feed)
    with pytest.raises(CalibrationError, match=r"bad\.npz visual_feats"):
        load_directory(tmp_path, spec)


def test_nan_and_zero_ranges_are_refused():
    validate_ranges({"a": (-1.0, 2.0)})
    with pytest.raises(CalibrationError, match="finite low and high"):
        validate_ranges({"a": (float("nan"), 1.0)})
    with pytest.raises(CalibrationError, match="constant tensor"):
        validate_ranges({"a": (0.5, 0.5)})
    with pytest.raises(CalibrationError, match="at least one calibrated tensor"):
        validate_ranges({})


def test_a_constant_activation_gives_a_zero_range_error(tiny_bundle):
    arrays = samples(tiny_bundle.graph("fusion"))
    arrays["visual_feats"][:] = 0.0  # the visual projection's MatMul input is constant
    with pytest.raises(CalibrationError, match="constant tensor"):
        collect_ranges(tiny_bundle.graph_path("fusion"), CalibrationSet(**arrays).feeds(), "minmax")


def test_unknown_method_and_bad_percentile(tiny_bundle):
    feeds = CalibrationSet(**samples(tiny_bundle.graph("fusion"))).feeds()
    with pytest.raises(QuantizationError, match="one of"):
        collect_ranges(tiny_bundle.graph_path("fusion"), feeds, "kl")
    with pytest.raises(QuantizationError, match="percentile"):
        collect_ranges(tiny_bundle.graph_path("fusion"), feeds, "percentile", percentile=120.0)


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_every_method_collects_ranges_over_variable_shapes(tiny_bundle, method, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = CalibrationSet(**samples(tiny_bundle.graph("fusion")))
    # 512 bins keep entropy's O(bins^2) search short here; production uses 2048.
    ranges = collect_ranges(tiny_bundle.graph_path("fusion"), data.feeds(), method, 99.99, bins=512)
    assert ranges.samples == 40 and len(ranges.values) > 10
    if method != "minmax":  # histogram methods clip outliers: never wider than min/max, tighter somewhere
        minmax = collect_ranges(tiny_bundle.graph_path("fusion"), data.feeds(), "minmax").values
        assert set(ranges.values) == set(minmax)
        bound = {k: max(abs(lo), abs(hi)) for k, (lo, hi) in minmax.items()}
        width = {k: max(abs(lo), abs(hi)) for k, (lo, hi) in ranges.values.items()}
        assert all(width[k] <= bound[k] * 1.001 for k in bound)
        assert any(width[k] < bound[k] * 0.99 for k in bound)
    assert list(tmp_path.iterdir()) == []  # nothing dropped in the working directory


def test_trt_calibration_cache_text():
    ranges = Ranges("minmax", {"x": (-2.54, 1.0), "y": (0.0, 12.7)})
    text = trt_calibration_cache(ranges)
    lines = text.splitlines()
    assert lines[0].startswith("TRT-") and lines[0].endswith("-EntropyCalibration2")
    assert lines[1] == "x: 3ca3d70a"  # 2.54 / 127 = 0.02 as big-endian float32 bits
    assert parse_trt_cache(text) == pytest.approx({"x": 0.02, "y": 0.1})


def test_missing_fp32_graph_is_a_clear_error(tiny_bundle, tmp_path):
    from fusionrt.calibration import quantize_fp16

    copy = Path(shutil.copytree(tiny_bundle.path, tmp_path / "copy"))
    (copy / "fusion.onnx").unlink()
    with pytest.raises(FusionrtError, match=r"fusion\.onnx"):
        quantize_fp16(copy)
    with pytest.raises(QuantizationError, match="an ONNX file"):
        write_qdq(copy / "fusion.onnx", tmp_path / "q.onnx", Ranges("minmax", {"a": (0, 1)}), CPU)
    manifest = json.loads((tiny_bundle.path / "manifest.json").read_text())
    del manifest["graphs"]["fusion"]["precisions"]["fp32"]
    shutil.copy(tiny_bundle.path / "fusion.onnx", copy / "fusion.onnx")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FusionrtError, match="precision"):
        quantize_fp16(copy)


def test_int8_needs_a_calibration_set(tiny_bundle, tmp_path):
    from fusionrt.calibration import quantize_int8

    copy = Path(shutil.copytree(tiny_bundle.path, tmp_path / "copy"))
    with pytest.raises(QuantizationError, match="fusionrt calibrate"):
        quantize_int8(copy)


def test_sensitivity_excludes_the_fewest_nodes(tiny_bundle):
    """A fake task where quantizing two given MatMuls costs accuracy: the pass must find exactly those two."""
    import onnx

    fp32 = tiny_bundle.graph_path("fusion")
    nodes = quantizable_nodes(fp32)
    harmful = {nodes[1], nodes[-2]}
    data = CalibrationSet(**samples(tiny_bundle.graph("fusion")))
    ranges = collect_ranges(fp32, data.feeds(), "minmax")

    class FakeEvaluator:
        def __init__(self):
            self.batches = [fusion_feed(tiny_bundle.graph("fusion"), 4, 5, 3, np.random.default_rng(0))]

        def measure_path(self, path):
            model = onnx.load(str(path))
            dq_outputs = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
            quantized = {n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm")
                         and any(i in dq_outputs for i in n.input)}
            hurt = len(harmful & quantized)
            return Measurement(questions=100, reference_accuracy=0.99, accuracy=0.99 - 0.02 * hurt,
                               agreement=1.0 - 0.02 * hurt)

    found = exclude_for_budget(fp32, ranges, TENSORRT, FakeEvaluator(), Budget(1.0, 0.98))
    assert set(found["excluded"]) == harmful
    assert len(found["table"]) == len(nodes) and found["measurement"]["passed"]
    assert found["latency_ms_all_quantized"] > 0 and found["latency_ms_with_exclusions"] > 0
