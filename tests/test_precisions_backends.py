"""Every precision the pipeline writes runs on every CPU backend, on a bundle that has all of them.

The bundle is a tiny random model with the graphs the pipeline writes: fp32, fp16 (mixed precision,
boundary Casts behind float inputs and outputs, as the real fp16 graph has) and both int8 graphs.
Outputs are compared with the fp32 ONNX Runtime run of the same feed; the tolerances are loose
(random weights, no calibration data), the point is that each backend loads and runs each graph.
"""

import numpy as np
import pytest
import torch

from fusionrt.calibration.choose import CPU_BACKENDS
from fusionrt.calibration.fp16 import convert_mixed_precision
from fusionrt.calibration.manifest import update_manifest
from fusionrt.calibration.qdq import CPU, TENSORRT, write_qdq
from fusionrt.calibration.ranges import collect_ranges
from fusionrt.export import export_onnx
from fusionrt.model import FusionConfig, FusionModel
from fusionrt.parity import fusion_feed
from fusionrt.pipeline.run import GRAPHS_OF, PRECISIONS
from fusionrt.runtime import Bundle, Session

CONFIG = FusionConfig(vocab_size=40, hidden=32, layers=2, heads=4, ffn=64, visual_dim=10, num_answers=5,
                      max_text_len=12, max_visual_len=6)
WRITTEN = [graph for precision in PRECISIONS for graph in GRAPHS_OF[precision]]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    torch.manual_seed(3)
    model = FusionModel(CONFIG).eval()
    out = export_onnx(model, tmp_path_factory.mktemp("prec") / "bundle", vocab_size=40, visual_dim=10,
                      max_text_len=12, max_visual_len=6, max_batch=8)
    graph = Bundle.open(out).graph("fusion")
    feeds = [fusion_feed(graph, 4, 1 + i % 12, 1 + i % 6, np.random.default_rng(i)) for i in range(8)]
    ranges = collect_ranges(out / "fusion.onnx", feeds)
    for recipe in (TENSORRT, CPU):
        write_qdq(out / "fusion.onnx", out / f"fusion.{recipe.precision}.onnx", ranges, recipe)
    convert_mixed_precision(out / "fusion.onnx", out / "fusion.fp16.onnx")
    files = {p: f"fusion.{p}.onnx" for p in WRITTEN if p != "fp32"}
    update_manifest(out, files=list(files.values()), precisions={"fusion": files})
    return out


def test_the_bundle_has_every_graph_the_pipeline_writes(bundle):
    assert set(Bundle.open(bundle).graph("fusion").precisions) == set(WRITTEN)


@pytest.mark.parametrize("backend", sorted(CPU_BACKENDS))
@pytest.mark.parametrize("precision", WRITTEN)
def test_every_written_precision_runs_on_every_cpu_backend(bundle, backend, precision):
    pytest.importorskip(CPU_BACKENDS[backend])
    opened = Bundle.open(bundle)
    feed = fusion_feed(opened.graph("fusion"), 3, 7, 4, np.random.default_rng(11))
    with Session(opened, "onnxruntime") as reference, Session(opened, backend, precision=precision) as session:
        want, got = reference.run(feed), session.run(feed)
    assert set(got) == {"hidden", "logits"}
    for name in got:
        assert got[name].shape == want[name].shape
        assert np.isfinite(got[name]).all()
        cosine = float(np.dot(got[name].ravel(), want[name].ravel())
                       / (np.linalg.norm(got[name]) * np.linalg.norm(want[name])))
        assert cosine > 0.9, (name, cosine)
