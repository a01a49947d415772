"""Every precision the pipeline writes runs on every CPU backend, on a bundle that has all of them.

The bundle (hardening_support.every_precision_bundle) is a tiny random model with the graphs the
pipeline writes: fp32, fp16 (mixed precision, boundary Casts behind float inputs and outputs, as the
real fp16 graph has) and both int8 graphs.
Outputs are compared with the fp32 ONNX Runtime run of the same feed; the tolerances are loose
(random weights, no calibration data), the point is that each backend loads and runs each graph.
"""

import numpy as np
import pytest
from hardening_support import every_precision_bundle

from fusionrt.bench.tune import CPU_BACKENDS
from fusionrt.parity import fusion_feed
from fusionrt.pipeline.run import GRAPHS_OF, PRECISIONS
from fusionrt.runtime import Bundle, Session

WRITTEN = [graph for precision in PRECISIONS for graph in GRAPHS_OF[precision]]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return every_precision_bundle(tmp_path_factory)


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
