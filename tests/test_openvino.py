"""The OpenVINO backend beyond what tests/test_runtime.py runs on every backend: quantized graphs, the
precision hint, what the compiled model reports it ran, and its errors.

The int8 graphs here come from ranges collected on random feeds of a tiny random model (no scenes):
they test that OpenVINO runs the bundle's Q/DQ graphs as integer layers, not their accuracy.
"""

import sys

import numpy as np
import pytest
import torch

from fusionrt.bundle.transaction import update_manifest
from fusionrt.calibration.qdq import CPU, TENSORRT, write_qdq
from fusionrt.calibration.ranges import collect_ranges
from fusionrt.export import export_onnx
from fusionrt.export.contract import fusion_spec
from fusionrt.model import FusionConfig, FusionModel
from fusionrt.parity import fusion_feed
from fusionrt.runtime import BackendError, BundleError, Session

pytest.importorskip("openvino")

CONFIG = FusionConfig(vocab_size=40, hidden=32, layers=2, heads=4, ffn=64, visual_dim=10, num_answers=5,
                      max_text_len=12, max_visual_len=6)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(1)
    return FusionModel(CONFIG).eval()


@pytest.fixture(scope="module")
def bundle(model, tmp_path_factory):
    """A tiny bundle with fp32, int8 (TensorRT Q/DQ) and int8-cpu (U8S8) fusion graphs."""
    out = export_onnx(model, tmp_path_factory.mktemp("ov") / "bundle", vocab_size=40, visual_dim=10,
                      max_text_len=12, max_visual_len=6, max_batch=8)
    feeds = [feed(4, 1 + i % 12, 1 + i % 6, seed=i) for i in range(16)]
    ranges = collect_ranges(out / "fusion.onnx", feeds)
    for recipe in (TENSORRT, CPU):
        write_qdq(out / "fusion.onnx", out / f"fusion.{recipe.precision}.onnx", ranges, recipe)
    update_manifest(out, files=["fusion.int8.onnx", "fusion.int8-cpu.onnx"],
                    precisions={"fusion": {"int8": "fusion.int8.onnx", "int8-cpu": "fusion.int8-cpu.onnx"}})
    return out


def feed(batch=3, text=7, visual=4, seed=0):
    graph = fusion_spec(vocab_size=40, visual_dim=10, hidden=32, num_answers=5, max_text_len=12, max_visual_len=6,
                        max_batch=8)
    return fusion_feed(graph, batch, text, visual, np.random.default_rng(seed))


def torch_logits(model, f):
    with torch.no_grad():
        return model(*(torch.from_numpy(f[k]) for k in ("input_ids", "text_mask", "visual_feats",
                                                          "visual_mask")))[1].numpy()


def test_f32_hint_runs_every_matmul_in_f32_within_1e_4_of_torch(bundle, model):
    session = Session(bundle, "openvino", hint="f32", threads=1)
    f = feed(batch=8, text=12, visual=6)
    np.testing.assert_allclose(session.run(f)["logits"], torch_logits(model, f), atol=1e-4, rtol=0)
    info = session.describe()
    assert info["hint"] == "f32" and info["threads"] == 1 and info["inference_precision"] == "f32"
    assert set(info["runtime_precision"]["FullyConnected"]) == {"f32"}


@pytest.mark.parametrize("precision", ["int8", "int8-cpu"])
def test_quantized_graphs_run_as_integer_layers(bundle, precision):
    """OpenVINO folds the Q/DQ pairs into integer FullyConnected layers: results move off fp32 by quantization
    noise (not by nothing, which would mean it ran the float graph, nor by garbage)."""
    session = Session(bundle, "openvino", precision=precision)
    fc = session.describe()["runtime_precision"]["FullyConnected"]
    assert set(fc) <= {"i8", "u8"} and sum(fc.values()) >= 2 * CONFIG.layers, fc
    f = feed(batch=5, text=9, visual=3, seed=4)
    fp32 = Session(bundle, "openvino").run(f)["logits"]
    error = np.abs(session.run(f)["logits"] - fp32).max()
    assert 1e-4 < error < 0.25 * np.abs(fp32).max(), (error, np.abs(fp32).max())


def test_bf16_hint_is_reported_as_what_actually_ran(bundle):
    """On a CPU without BF16 instructions OpenVINO keeps f32; describe() must say so rather than echo the hint."""
    info = Session(bundle, "openvino", hint="bf16").describe()
    assert info["hint"] == "bf16"
    ran = set(info["runtime_precision"]["FullyConnected"])
    assert ran in ({"bf16"}, {"f32"}), ran
    assert info["inference_precision"] == ("bf16" if ran == {"bf16"} else "f32")


@pytest.mark.parametrize(("options", "match"), [
    ({"hint": "fp16"}, r"hint: expected one of \['f32', 'bf16'\].*received 'fp16'"),
    ({"threads": 0}, r"threads: expected a positive int.*received 0"),
    ({"threads": "2"}, r"threads: expected a positive int.*received '2'"),
])
def test_bad_options_are_refused(bundle, options, match):
    with pytest.raises(BackendError, match=match):
        Session(bundle, "openvino", **options)


def test_missing_package_is_a_backend_error(bundle, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(BackendError, match=r"backend 'openvino': expected the openvino package.*fusionrt\[openvino\]"):
        Session(bundle, "openvino")


def test_a_file_openvino_cannot_read_is_a_bundle_error(bundle, tmp_path):
    import shutil

    from fusionrt.bundle.transaction import file_entry

    copy = shutil.copytree(bundle, tmp_path / "copy")
    data = (copy / "fusion.onnx").read_bytes()
    (copy / "fusion.onnx").write_bytes(data[: len(data) // 3])
    update_manifest(copy, files=["fusion.onnx"])  # hashes match the broken file: only the load can catch it
    assert file_entry(copy / "fusion.onnx")["bytes"] == len(data) // 3
    with pytest.raises(BundleError, match=r"fusion\.onnx: expected an ONNX model OpenVINO can read"):
        Session(copy, "openvino")
