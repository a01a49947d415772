"""The ``caption`` model on a real tritonserver: PNG in, the caption the local Captioner makes out (greedy,
beam, max_tokens), concurrent requests batched together, bad requests refused with a clean 400.

One server for the module (its start is the expensive part); the shipped caption bundle, no export."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import text_format
from triton_support import assert_clean_client_error, png, serve
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException

from fusionrt.caption.captioner import SHIPPED_CAPTION_BUNDLE, Captioner
from fusionrt.data.world import generate_scene, render, split_seeds
from fusionrt.serve import RepositoryOptions, write_repository

pytestmark = pytest.mark.slow
CLIENTS = {"http": httpclient, "grpc": grpcclient}
MAX_BATCH = 8


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    repo = write_repository(SHIPPED_CAPTION_BUNDLE, tmp_path_factory.mktemp("caption") / "repo",
                            RepositoryOptions(max_batch=MAX_BATCH, queue_delay_us=5000))
    yield from serve(repo)


@pytest.fixture(scope="module")
def captioner():
    return Captioner(SHIPPED_CAPTION_BUNDLE)


def caption(served, protocol: str, images: list[bytes], beam: list[int] | None = None,
            max_tokens: list[int] | None = None) -> list[str]:
    module = CLIENTS[protocol]
    client = module.InferenceServerClient(served[protocol])
    inputs = [module.InferInput("image", [len(images), 1], "BYTES")]
    inputs[0].set_data_from_numpy(np.array(images, dtype=np.object_).reshape(-1, 1))
    for name, values in (("beam", beam), ("max_tokens", max_tokens)):
        if values is not None:
            tensor = module.InferInput(name, [len(values), 1], "INT32")
            tensor.set_data_from_numpy(np.array(values, dtype=np.int32).reshape(-1, 1))
            inputs.append(tensor)
    try:
        result = client.infer("caption", inputs)
    finally:
        client.close()  # an open HTTP keep-alive connection holds the server's shutdown for its exit timeout
    return [c.decode() for c in result.as_numpy("caption")[:, 0]]


def test_repository_of_a_caption_bundle_is_one_caption_model(served):
    repo = served["repo"]
    assert sorted(p.parent.name for p in repo.glob("*/config.pbtxt")) == ["caption"]
    config = text_format.Parse((repo / "caption" / "config.pbtxt").read_text(), mc.ModelConfig())
    assert [(t.name, t.data_type, t.optional) for t in config.input] == [
        ("image", mc.TYPE_STRING, False), ("beam", mc.TYPE_INT32, True), ("max_tokens", mc.TYPE_INT32, True)]
    assert [t.name for t in config.output] == ["caption"] and config.max_batch_size == MAX_BATCH


def test_concurrent_captions_equal_the_local_captioner(served, captioner):
    scenes = [render(generate_scene(seed)) for seed in split_seeds("heldout", 6)]
    expected = captioner.caption_many(scenes)
    assert len(set(expected)) > 1  # different scenes, different captions: a constant answer would fail
    jobs = [(protocol, i) for i in range(len(scenes)) for protocol in CLIENTS]
    with ThreadPoolExecutor(6) as pool:  # sent at once: the dynamic batcher merges them into one generate
        got = list(pool.map(lambda job: caption(served, job[0], [png(scenes[job[1]])])[0], jobs))
    assert got == [expected[i] for _, i in jobs]
    # several rows in one request, with a per-row beam and token limit
    rows = caption(served, "grpc", [png(s) for s in scenes[:3]], beam=[1, 3, 1], max_tokens=[4, 40, 40])
    assert rows[0] == captioner.caption(scenes[0], max_new_tokens=4)
    assert rows[1] == captioner.caption(scenes[1], beam=3)
    assert rows[2] == expected[2]
    assert len(rows[0].split()) < len(expected[0].split())


@pytest.mark.parametrize(("case", "expected"), [
    ("not png", "image: expected a 128x128 RGB image"),
    ("blank", "no object detected"),
    ("beam 0", "beam: expected an integer in [1, 16]"),
    ("beam 99", "beam: expected an integer in [1, 16], received 99"),
    ("max_tokens 0", "max_tokens: expected an integer in [1, 47]"),
    ("max_tokens 1000", "received 1000"),
])
@pytest.mark.parametrize("protocol", sorted(CLIENTS))
def test_bad_caption_requests_get_a_clean_400(served, protocol, case, expected):
    scene = png(render(generate_scene(3)))
    images = {"not png": b"GIF89a", "blank": png(np.full((128, 128, 3), 235, np.uint8))}
    kind, _, value = case.partition(" ")
    options = {kind: [int(value)]} if kind in ("beam", "max_tokens") else {}
    with pytest.raises(InferenceServerException) as caught:
        caption(served, protocol, [images.get(case, scene)], **options)
    assert_clean_client_error(caught.value, expected)
    assert caption(served, protocol, [scene])[0]  # the server keeps serving
