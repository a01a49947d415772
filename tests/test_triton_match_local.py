"""``embed_text`` and ``match`` with ``calls: local`` (their graphs run inside the stub), in process: the
Python-backend module exists only inside Triton's stub, so a minimal stand-in gives the models their requests
(the BLS path is tested on the real server in tests/test_triton_match.py)."""

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from fusionrt.search.encode import pad_regions
from fusionrt.search.searcher import SHIPPED_MATCH_BUNDLE, Matcher
from fusionrt.serve import RepositoryOptions, write_repository
from fusionrt.serve.match_models import EmbedTextModel, MatchModel


class Tensor:
    def __init__(self, name, value):
        self.name, self.value = name, np.asarray(value)

    def as_numpy(self):
        return self.value


class Response:
    def __init__(self, output_tensors=None, error=None):
        self.outputs = {t.name: t.value for t in output_tensors or ()}
        self.error = error


class TritonError(Exception):
    INVALID_ARG, INTERNAL = 3, 1

    def __init__(self, message, code=None):
        super().__init__(message)
        self.code = code


def stand_in() -> types.ModuleType:
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor, module.InferenceResponse, module.TritonError = Tensor, Response, TritonError
    module.get_input_tensor_by_name = lambda request, name: request.get(name)
    module.Logger = types.SimpleNamespace(log_error=lambda message: None)
    return module


def load(model_cls, repo: Path, name: str, monkeypatch):
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", stand_in())
    model = model_cls()
    model.initialize({"model_name": name, "model_repository": str(repo / name), "model_version": "1",
                      "model_config": json.dumps({
                          "max_batch_size": 8, "parameters": {
                              k: {"string_value": v} for k, v in {"calls": "local", "precision": "fp32"}.items()}})})
    return model


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return write_repository(SHIPPED_MATCH_BUNDLE, tmp_path_factory.mktemp("local") / "repo",
                            RepositoryOptions(answer_calls="local", max_batch=8))


def texts(*values):
    return Tensor("text", np.array([[v.encode()] for v in values], dtype=np.object_))


def test_local_calls_equal_the_matcher_and_refusals_are_400s(repo, monkeypatch):
    matcher = Matcher()
    embed = load(EmbedTextModel, repo, "embed_text", monkeypatch)
    queries = ["a small red circle", "two blue objects", "a green square left of a yellow triangle"]
    responses = embed.execute([{"text": texts(q)} for q in queries] + [{"text": texts(*queries)}])
    for query, response in zip(queries, responses, strict=False):
        np.testing.assert_allclose(response.outputs["embedding"][0], matcher.embed_text(query), atol=1e-5)
    assert responses[-1].outputs["embedding"].shape == (3, 64)

    match = load(MatchModel, repo, "match", monkeypatch)
    rng = np.random.default_rng(0)
    regions = [rng.normal(size=(int(n), 69)).astype(np.float32) for n in rng.integers(1, 17, size=11)]
    requests = []
    # 11 rows in two requests of different M and texts: more than max_batch 8 in total, run in chunks
    for query, chunk in ((queries[0], regions[:6]), (queries[1], regions[6:])):
        feats, mask = pad_regions(chunk, 69)
        requests.append({"text": texts(*[query] * len(chunk)),
                         "visual_feats": Tensor("visual_feats", feats), "visual_mask": Tensor("visual_mask", mask)})
    bad = {"text": texts("a red circle"), "visual_feats": Tensor("visual_feats", np.zeros((1, 3, 69), np.float32)),
           "visual_mask": Tensor("visual_mask", np.ones((1, 2), bool))}
    first, second, refused = match.execute([*requests, bad])
    expected = [1 / (1 + np.exp(-matcher.itm_logits(queries[0], regions[:6]))),
                1 / (1 + np.exp(-matcher.itm_logits(queries[1], regions[6:])))]
    np.testing.assert_allclose(first.outputs["score"][:, 0], expected[0], atol=1e-5)
    np.testing.assert_allclose(second.outputs["score"][:, 0], expected[1], atol=1e-5)
    assert refused.error.code == TritonError.INVALID_ARG and "one flag per region" in str(refused.error)
    matcher.close()


def test_tensorrt_repository_puts_the_plan_on_fusion_and_the_other_graphs_on_onnxruntime(tmp_path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    plan = tmp_path / "fusion.plan"
    plan.write_bytes(b"not a real TensorRT engine")  # Triton reads it only at load time, in an NGC container
    repo = write_repository(SHIPPED_MATCH_BUNDLE, tmp_path / "repo", RepositoryOptions(backend="tensorrt",
                                                                                       plan=str(plan)))
    configs = {p.parent.name: text_format.Parse(p.read_text(), mc.ModelConfig()) for p in repo.glob("*/config.pbtxt")}
    assert {n: c.platform or c.backend for n, c in configs.items()} == {
        "fusion": "tensorrt_plan", "region_encoder": "onnxruntime_onnx", "text_embed": "onnxruntime_onnx",
        "image_embed": "onnxruntime_onnx", "embed_text": "python", "match": "python"}
    assert (repo / "fusion" / "1" / "model.plan").read_bytes() == plan.read_bytes()
    assert configs["region_encoder"].max_batch_size == 4096 and configs["match"].max_batch_size == 256


def test_a_caption_repository_refuses_other_backends(tmp_path):
    from fusionrt.caption.captioner import SHIPPED_CAPTION_BUNDLE
    from fusionrt.errors import InputError

    with pytest.raises(InputError, match="python for a caption bundle"):
        write_repository(SHIPPED_CAPTION_BUNDLE, tmp_path / "repo", RepositoryOptions(backend="onnxruntime"))
    assert list(tmp_path.iterdir()) == []  # nothing written, no staging directory left
