"""A real tritonserver (nvidia-pytriton) serving a generated repository: results equal the local runtime,
bad requests get clear errors, load failures name the file, and stopping leaves nothing behind.

The server runs in the serving venv (.venv-serve: numpy<2, no torch); the clients and the local
reference (Session, Answerer) run here. Requests are sent from threads at once, so the dynamic
batcher merges requests of different T and M into one execution.
"""

import contextlib
import os
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from hardening_support import png_bomb
from triton_support import (
    ROOT,
    assert_clean_client_error,
    left_behind,
    png,
    serving_python,
    shipped_bundle,
    start_server,
)
from tritonclient.utils import InferenceServerException

from fusionrt.app import Answerer
from fusionrt.data.questions import questions_for
from fusionrt.data.world import generate_scene, render, split_seeds
from fusionrt.parity.grid import fusion_feed
from fusionrt.runtime import Session
from fusionrt.serve import RepositoryOptions, write_repository

pytestmark = pytest.mark.slow
MAX_BATCH = 8
CLIENTS = {"http": httpclient, "grpc": grpcclient}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return shipped_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def served(bundle, tmp_path_factory):
    python = serving_python()
    repo = write_repository(bundle, tmp_path_factory.mktemp("served") / "repo",
                            RepositoryOptions(max_batch=MAX_BATCH, queue_delay_us=2000))
    process, info = start_server(repo, python)
    yield {**info, "process": process, "repo": repo, "python": python}
    if process.poll() is None:  # a test failed before the stop test: stop it the clean way
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    process.stdout.close()
    process.stderr.close()


def ask(served, protocol: str, images: list[bytes], questions: list[str], outputs=("answer", "probability",
                                                                                      "probabilities")):
    module = CLIENTS[protocol]
    client = module.InferenceServerClient(served[protocol])
    image = module.InferInput("image", [len(images), 1], "BYTES")
    image.set_data_from_numpy(np.array(images, dtype=np.object_).reshape(-1, 1))
    question = module.InferInput("question", [len(questions), 1], "BYTES")
    question.set_data_from_numpy(np.array([q.encode() for q in questions], dtype=np.object_).reshape(-1, 1))
    result = client.infer("answer", [image, question])
    return {name: result.as_numpy(name) for name in outputs}


def infer_fusion(served, protocol: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    module = CLIENTS[protocol]
    client = module.InferenceServerClient(served[protocol])
    inputs = []
    for name, value in feed.items():
        tensor = module.InferInput(name, list(value.shape), "BOOL" if value.dtype == bool else
                                   {"int64": "INT64", "float32": "FP32", "float64": "FP64",
                                    "int32": "INT32"}[value.dtype.name])
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    result = client.infer("fusion", inputs)
    return {name: result.as_numpy(name) for name in ("hidden", "logits")}


def test_concurrent_answers_equal_the_local_answerer(served, bundle):
    answerer = Answerer(bundle)
    cases = []
    for seed in split_seeds("heldout", 12):
        scene = generate_scene(seed)
        for question in questions_for(scene, np.random.default_rng(seed))[:2]:
            cases.append((render(scene), question.text))
    jobs = [(protocol, i) for i in range(len(cases)) for protocol in CLIENTS]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda job: ask(served, job[0], [png(cases[job[1]][0])], [cases[job[1]][1]]), jobs))
    for (_protocol, i), result in zip(jobs, got, strict=True):
        pixels, text = cases[i]
        probs = answerer.probabilities(pixels, text)
        expected = max(probs, key=probs.__getitem__)
        assert result["answer"][0, 0].decode() == expected
        np.testing.assert_allclose(result["probability"][0, 0], probs[expected], atol=1e-5)
        np.testing.assert_allclose(result["probabilities"][0], list(probs.values()), atol=1e-5)
    # One request with several rows answers each row as the Answerer does.
    batch = ask(served, "grpc", [png(p) for p, _ in cases[:4]], [t for _, t in cases[:4]])
    assert [a.decode() for a in batch["answer"][:, 0]] == [answerer.ask(p, t)[0] for p, t in cases[:4]]


def test_concurrent_fusion_logits_equal_the_local_session(served, bundle):
    session = Session(bundle)
    rng = np.random.default_rng(3)
    feeds = [fusion_feed(session.runner.graph, int(rng.integers(1, MAX_BATCH + 1)), int(rng.integers(2, 33)),
                         int(rng.integers(1, 17)), rng) for _ in range(16)]
    jobs = [(protocol, feed) for feed in feeds for protocol in CLIENTS]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda job: infer_fusion(served, *job), jobs))
    for (_protocol, feed), result in zip(jobs, got, strict=True):
        expected = session.run(feed)
        assert result["logits"].shape == expected["logits"].shape
        assert result["hidden"].shape == expected["hidden"].shape  # padding of merged requests is cut off
        np.testing.assert_allclose(result["logits"], expected["logits"], atol=1e-4, rtol=0)
        np.testing.assert_allclose(result["hidden"], expected["hidden"], atol=1e-4, rtol=0)


def _good_feed(batch: int = 1) -> dict[str, np.ndarray]:
    return {"input_ids": np.full((batch, 5), 3, np.int64), "text_mask": np.ones((batch, 5), bool),
            "visual_feats": np.zeros((batch, 2, 69), np.float32), "visual_mask": np.ones((batch, 2), bool)}


BAD_FUSION = {
    "wrong dtype": ({**_good_feed(), "visual_feats": np.zeros((1, 2, 69), np.float64)}, "data-type"),
    "wrong shape": ({**_good_feed(), "visual_feats": np.zeros((1, 2, 70), np.float32)}, "shape"),
    "over max batch": (_good_feed(MAX_BATCH + 1), f"batch-size must be <= {MAX_BATCH}"),
    "unknown input": ({**_good_feed(), "extra": np.zeros((1, 1), np.float32)}, "expected 4 inputs but got 5"),
    "token id out of range": ({**_good_feed(), "input_ids": np.full((1, 5), 10_000, np.int64)}, "input_ids"),
    "too many regions": ({**_good_feed(), "visual_feats": np.zeros((1, 17, 69), np.float32),
                          "visual_mask": np.ones((1, 17), bool)}, "visual_feats"),
    # Finite, but past what the graph carries: an error, never HTTP 200 with NaN logits.
    "non-finite outputs": ({**_good_feed(), "visual_feats": np.full((1, 2, 69), 3e38, np.float32)}, "non-finite"),
}


@pytest.mark.parametrize("case", sorted(BAD_FUSION))
@pytest.mark.parametrize("protocol", sorted(CLIENTS))
def test_bad_fusion_requests_get_clear_errors_and_the_server_keeps_serving(served, protocol, case):
    feed, expected = BAD_FUSION[case]
    with pytest.raises(InferenceServerException) as caught:
        infer_fusion(served, protocol, feed)
    assert_clean_client_error(caught.value, expected)
    assert infer_fusion(served, protocol, _good_feed())["logits"].shape == (1, 22)


@pytest.mark.parametrize(("image", "question", "expected"), [
    (b"GIF89a not an image", "How many objects are there?", "image: expected a 128x128 RGB image encoded as PNG"),
    ("blank", "How many objects are there?", "no object detected"),
    ("scene", "How many zebras are there?", "unknown word(s) ['zebras']"),
    ("small", "How many objects are there?", "images are not resized"),
    ("bomb", "How many objects are there?", "12000x12000"),
    ("scene", "?", "naming something in the scene"),
])
@pytest.mark.parametrize("protocol", sorted(CLIENTS))
def test_bad_answer_requests_get_our_error_message(served, protocol, image, question, expected):
    scene = render(generate_scene(5))
    images = {"blank": png(np.full((128, 128, 3), 235, np.uint8)), "scene": png(scene), "small": png(scene[:64]),
              "bomb": png_bomb(12000)}
    with pytest.raises(InferenceServerException) as caught:
        ask(served, protocol, [images.get(image, image)], [question])
    assert_clean_client_error(caught.value, expected)
    # Concurrent good requests batched with a bad one still get their answers.
    with ThreadPoolExecutor(4) as pool:
        good = pool.submit(ask, served, protocol, [png(scene)], ["How many objects are there?"])
        with pytest.raises(InferenceServerException):
            pool.submit(ask, served, protocol, [images.get(image, image)], [question]).result()
        assert good.result()["answer"][0, 0].decode() == str(len(generate_scene(5).objects))


def test_model_load_failure_names_the_missing_or_altered_file(served, tmp_path):
    repo = Path(shutil.copytree(served["repo"], tmp_path / "broken"))  # copies: the served files stay intact
    with open(repo / "fusion" / "1" / "bundle" / "fusion.onnx", "ab") as handle:
        handle.write(b"\0")
    (repo / "answer" / "1" / "bundle" / "tokenizer.json").unlink()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([str(served["python"]), "-m", "fusionrt", "serve", str(repo), "--timeout", "120"],
                          capture_output=True, text=True, env=env, timeout=200)
    assert done.returncode == 2, done.stdout
    assert "fusion.onnx" in done.stderr and "truncated or altered file" in done.stderr
    assert "tokenizer.json" in done.stderr and "missing file" in done.stderr
    # the failed server's segments are gone; only the running one's remain
    assert all(p.name.startswith(served["prefix"]) for p in Path("/dev/shm").glob("fusionrt*_*"))


def test_sigterm_to_the_launcher_pid_stops_everything(served):
    process, info = served["process"], served
    assert left_behind(info), "a running server has a process group and shm segments"
    os.kill(process.pid, signal.SIGTERM)
    assert process.wait(60) == 0
    # Stubs the server ended may stay zombies until init reaps them: allow a few seconds for that.
    deadline = time.monotonic() + 15
    while left_behind(info) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left_behind(info) == []
    with pytest.raises(ProcessLookupError):
        os.kill(info["pid"], 0)


def test_a_killed_launcher_takes_its_server_down(served):
    """kill -9 of `fusionrt serve` cannot run its shutdown: the server gets SIGTERM from the kernel
    (PR_SET_PDEATHSIG) and removes its own shared memory."""
    process, info = start_server(served["repo"], served["python"])
    try:
        assert left_behind(info)
        process.kill()
        process.wait(10)
        deadline = time.monotonic() + 60
        while left_behind(info) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert left_behind(info) == []
    finally:
        process.stdout.close()
        process.stderr.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(info["pid"], signal.SIGKILL)
