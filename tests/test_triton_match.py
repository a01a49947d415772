"""The ``embed_text`` and ``match`` models of a match bundle on a real tritonserver: embeddings and ITM scores
equal the local Matcher's, the README's two-stage client example (examples/triton_search.py: Qdrant first
stage, Triton re-rank) returns what the local Searcher returns, and bad requests get a clean 400.

One server for the module; the shipped match bundle; a small index of held-out scenes."""

import importlib.util
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from triton_support import ROOT, assert_clean_client_error, serve
from tritonclient.utils import InferenceServerException

from fusionrt.bundle.manifest import Bundle
from fusionrt.data.world import generate_scene, render, split_seeds
from fusionrt.search.encode import ImageEncoder
from fusionrt.search.index import ImageIndex
from fusionrt.search.searcher import SHIPPED_MATCH_BUNDLE, Matcher, Searcher
from fusionrt.serve import RepositoryOptions, write_repository

pytest.importorskip("qdrant_client", reason="the search extra (pip install 'fusionrt[search]') is not installed")

pytestmark = pytest.mark.slow
CLIENTS = {"http": httpclient, "grpc": grpcclient}
MAX_BATCH = 16
QUERIES = ("a small red circle", "a green square left of a yellow triangle", "two blue objects", "a large square")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    repo = write_repository(SHIPPED_MATCH_BUNDLE, tmp_path_factory.mktemp("match") / "repo",
                            RepositoryOptions(max_batch=MAX_BATCH, queue_delay_us=5000))
    yield from serve(repo)


@pytest.fixture(scope="module")
def matcher():
    matcher = Matcher()
    yield matcher
    matcher.close()


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    from PIL import Image

    directory = tmp_path_factory.mktemp("scenes")
    for seed in split_seeds("heldout", 40, start=600_000):
        Image.fromarray(render(generate_scene(seed))).save(directory / f"{seed}.png")
    bundle = Bundle.open(SHIPPED_MATCH_BUNDLE)
    path = tmp_path_factory.mktemp("index") / "index"
    built, encoder = ImageIndex(path, bundle), ImageEncoder(bundle)
    built.add(directory, encoder)
    regions = built.regions.get(sorted(built.regions.keys()))
    built.close()
    encoder.close()
    return path, regions


def infer(served, protocol: str, model: str, inputs: dict[str, np.ndarray], output: str) -> np.ndarray:
    module = CLIENTS[protocol]
    client = module.InferenceServerClient(served[protocol])
    tensors = []
    for name, value in inputs.items():
        kind = "BYTES" if value.dtype == np.object_ else {"bool": "BOOL", "float32": "FP32"}[value.dtype.name]
        tensor = module.InferInput(name, list(value.shape), kind)
        tensor.set_data_from_numpy(value)
        tensors.append(tensor)
    try:
        return client.infer(model, tensors).as_numpy(output)
    finally:
        client.close()  # an open HTTP keep-alive connection holds the server's shutdown for its exit timeout


def texts(*values: str) -> np.ndarray:
    return np.array([[v.encode()] for v in values], dtype=np.object_)


def padded(regions: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(r) for r in regions)
    feats = np.zeros((len(regions), width, regions[0].shape[1]), np.float32)
    mask = np.zeros((len(regions), width), bool)
    for row, r in enumerate(regions):
        feats[row, : len(r)], mask[row, : len(r)] = r, True
    return feats, mask


def test_repository_has_a_model_per_graph_and_embed_text_and_match(served):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    repo = served["repo"]
    assert sorted(p.parent.name for p in repo.glob("*/config.pbtxt")) == [
        "embed_text", "fusion", "image_embed", "match", "region_encoder", "text_embed"]
    config = {n: text_format.Parse((repo / n / "config.pbtxt").read_text(), mc.ModelConfig())
              for n in ("embed_text", "match")}
    assert [(t.name, t.data_type, list(t.dims)) for t in config["match"].input] == [
        ("text", mc.TYPE_STRING, [1]), ("visual_feats", mc.TYPE_FP32, [-1, 69]), ("visual_mask", mc.TYPE_BOOL, [-1])]
    assert [t.name for t in config["match"].output] == ["score", "logit"]
    assert [(t.name, list(t.dims)) for t in config["embed_text"].output] == [("embedding", [64])]
    assert config["match"].parameters["calls"].string_value == "bls"


def test_embed_text_equals_the_local_matcher(served, matcher):
    jobs = [(protocol, q) for q in QUERIES for protocol in CLIENTS]
    with ThreadPoolExecutor(4) as pool:  # at once: texts of different lengths padded into one batch
        got = list(pool.map(lambda job: infer(served, job[0], "embed_text", {"text": texts(job[1])}, "embedding"),
                            jobs))
    for (_, query), embedding in zip(jobs, got, strict=True):
        assert embedding.shape == (1, int(matcher.bundle.model["embed_dim"]))
        np.testing.assert_allclose(embedding[0], matcher.embed_text(query), atol=1e-5)
        assert np.linalg.norm(embedding[0]) == pytest.approx(1.0, abs=1e-5)
    several = infer(served, "grpc", "embed_text", {"text": texts(*QUERIES)}, "embedding")
    np.testing.assert_allclose(several, [matcher.embed_text(q) for q in QUERIES], atol=1e-5)


def test_match_scores_equal_the_local_matcher(served, matcher, index):
    regions = index[1][:24]
    jobs = [(protocol, q, start) for q in QUERIES[:2] for start in (0, 8, 16) for protocol in CLIENTS]

    def score(job):
        protocol, query, start = job
        feats, mask = padded(regions[start:start + 8])
        return infer(served, protocol, "match", {"text": texts(*[query] * len(feats)), "visual_feats": feats,
                                                 "visual_mask": mask}, "score")

    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(score, jobs))
    for (_, query, start), scores in zip(jobs, got, strict=True):
        expected = 1 / (1 + np.exp(-matcher.itm_logits(query, regions[start:start + 8])))
        np.testing.assert_allclose(scores[:, 0], expected, atol=1e-5)
    assert np.ptp(np.concatenate(got)) > 0.5  # relevant and irrelevant images: scores that differ


def test_two_stage_client_example_returns_what_the_searcher_returns(served, index, monkeypatch):
    from qdrant_client import QdrantClient

    from fusionrt.search.regions import RegionStore

    path, _ = index
    searcher = Searcher(path, first_stage="store")  # the vector database's own search, as the example uses
    try:
        expected = {q: searcher.search(q, top=5, rerank=12) for q in QUERIES}
    finally:
        searcher.close()  # local mode locks its directory: one client at a time
    spec = importlib.util.spec_from_file_location("triton_search", ROOT / "examples" / "triton_search.py")
    example = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, example)  # its dataclass looks its module up there
    spec.loader.exec_module(example)
    qdrant, regions = QdrantClient(path=str(path / "vectors")), RegionStore(path / "regions.sqlite", 69)
    try:
        with grpcclient.InferenceServerClient(served["grpc"]) as triton:
            for query, hits in expected.items():
                got = example.search(query, triton, qdrant, regions, top=5, rerank=12)
                assert [h.path for h in got] == [h.path for h in hits]
                np.testing.assert_allclose([h.score for h in got], [h.score for h in hits], atol=1e-5)
    finally:
        qdrant.close()
        regions.close()


BAD = {
    "unknown word": ("embed_text", {"text": texts("a purple zebra")}, "unknown word(s) ['zebra']"),
    "empty text": ("embed_text", {"text": texts("")}, "a non-empty string"),
    "mask shape": ("match", {"text": texts("a red circle"), "visual_feats": np.zeros((1, 3, 69), np.float32),
                             "visual_mask": np.ones((1, 2), bool)}, "visual_mask: expected one flag per region"),
    "too many regions": ("match", {"text": texts("a red circle"), "visual_feats": np.zeros((1, 17, 69), np.float32),
                                   "visual_mask": np.ones((1, 17), bool)}, "visual_feats"),
}


@pytest.mark.parametrize("case", sorted(BAD))
@pytest.mark.parametrize("protocol", sorted(CLIENTS))
def test_bad_requests_get_a_clean_400(served, protocol, case):
    model, inputs, expected = BAD[case]
    with pytest.raises(InferenceServerException) as caught:
        infer(served, protocol, model, inputs, "embedding" if model == "embed_text" else "score")
    assert_clean_client_error(caught.value, expected)
    assert infer(served, protocol, "embed_text", {"text": texts("a red circle")}, "embedding").shape == (1, 64)
