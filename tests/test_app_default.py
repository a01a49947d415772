"""The default serving path (packaged bundle on ONNX Runtime, no torch) and the batched ask_many API."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fusionrt.app import SHIPPED_BUNDLE, Answerer, BundlePipeline
from fusionrt.data.questions import questions_for
from fusionrt.data.world import generate_scene, render, split_seeds
from fusionrt.errors import InputError, NoObjectsError
from fusionrt.runtime import Bundle

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def answerer():
    return Answerer()


def _scenes(count, start=700):
    out = []
    for seed in split_seeds("heldout", count, start=start):
        scene = generate_scene(int(seed))
        out.append((render(scene), questions_for(scene, np.random.default_rng(int(seed)))))
    return out


def test_packaged_bundle_verifies_and_comes_from_the_shipped_checkpoint():
    from fusionrt.bundle.source import checkpoint_files_sha256
    from fusionrt.model import SHIPPED_CHECKPOINT

    bundle = Bundle.open(SHIPPED_BUNDLE)  # checks every file's size and sha256
    assert bundle.manifest["source"]["files"] == checkpoint_files_sha256(SHIPPED_CHECKPOINT), \
        "fusionrt/assets/small-bundle is stale: rerun scripts/make_small_bundle.py"
    assert bundle.manifest["verification"]["graphs"]["fusion"]["points"] > 0


def test_default_answerer_runs_the_bundle_on_onnxruntime(answerer):
    assert isinstance(answerer.pipeline, BundlePipeline)
    assert answerer.pipeline.fusion.backend == "onnxruntime"
    assert answerer.pipeline.bundle.path == SHIPPED_BUNDLE


_NO_TORCH = """
import sys
from fusionrt.app import Answerer
from fusionrt.data.world import generate_scene, render
scene = generate_scene(11)
answer, p = Answerer().ask(render(scene), "How many objects are there?")
assert answer == str(len(scene.objects)), (answer, len(scene.objects))
assert "torch" not in sys.modules, "torch was imported"
print("ok")
"""


def test_default_answerer_never_imports_torch():
    result = subprocess.run([sys.executable, "-c", _NO_TORCH], capture_output=True, text=True, cwd=REPO,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_cli_ask_without_a_model_never_imports_torch(tmp_path):
    image = tmp_path / "s.png"
    Image.fromarray(render(generate_scene(4))).save(image)
    code = ("import sys; sys.argv = ['fusionrt', 'ask', sys.argv[1], 'How many objects are there?', '--json', '-']\n"
            "from fusionrt.cli import main\n"
            "rc = main(sys.argv[1:])\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            "sys.exit(rc)\n")
    result = subprocess.run([sys.executable, "-c", code, str(image)], capture_output=True, text=True, cwd=REPO,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["answer"] == str(len(generate_scene(4).objects))


def test_default_bundle_agrees_with_the_pytorch_checkpoint(answerer):
    from fusionrt.app import TorchPipeline
    from fusionrt.model import SHIPPED_CHECKPOINT

    torch_answerer = Answerer(SHIPPED_CHECKPOINT)  # a checkpoint directory selects the PyTorch original
    assert isinstance(torch_answerer.pipeline, TorchPipeline)
    for image, questions in _scenes(5):
        for q in questions[:4]:
            ours, ref = answerer.probabilities(image, q.text), torch_answerer.probabilities(image, q.text)
            assert max(ours, key=ours.get) == max(ref, key=ref.get)
            assert max(abs(ours[a] - ref[a]) for a in ref) < 1e-4


def test_ask_many_matches_ask_one_at_a_time(answerer, tmp_path):
    scenes = _scenes(4, start=800)
    path = tmp_path / "scene0.png"
    Image.fromarray(scenes[0][0]).save(path)
    pairs = []
    for image, questions in scenes:
        pairs += [(image, q.text) for q in questions]  # questions of different lengths, scenes of different M
    pairs += [(path, q.text) for q in scenes[0][1][:3]] + [(str(path), scenes[0][1][0].text)]
    batched = answerer.probabilities_many(pairs, batch_size=7)
    assert len(batched) == len(pairs)
    for (image, question), probs in zip(pairs, batched, strict=True):
        single = answerer.probabilities(image, question)
        assert max(abs(probs[a] - single[a]) for a in single) < 1e-5
    assert [a for a, _ in answerer.ask_many(pairs)] == [max(p, key=p.get) for p in batched]


def test_ask_many_encodes_each_image_once_and_batches_fusion(answerer, monkeypatch):
    (image, questions), (other, other_questions) = _scenes(2, start=820)
    calls = {"encode": [], "fuse": []}
    pipeline = answerer.pipeline
    encode, fuse = pipeline.encode_regions, pipeline.fuse
    monkeypatch.setattr(pipeline, "encode_regions", lambda c, g: calls["encode"].append(len(c)) or encode(c, g))
    monkeypatch.setattr(pipeline, "fuse", lambda *a: calls["fuse"].append(a[0].shape[0]) or fuse(*a))
    pairs = [(image, q.text) for q in questions] + [(other, q.text) for q in other_questions]
    answerer.ask_many(pairs, batch_size=4)
    from fusionrt.data.detector import detect_regions

    regions = len(detect_regions(image, max_regions=16)) + len(detect_regions(other, max_regions=16))
    assert calls["encode"] == [regions]  # both images in one region-encoder call, each once
    assert calls["fuse"] == [min(4, len(pairs) - a) for a in range(0, len(pairs), 4)]


def test_ask_many_bad_input(answerer):
    assert answerer.ask_many([]) == []
    with pytest.raises(InputError, match="batch_size"):
        answerer.ask_many([(np.zeros((128, 128, 3), np.uint8), "How many objects are there?")], batch_size=0)
    blank = np.full((128, 128, 3), 235, dtype=np.uint8)
    image, questions = _scenes(1)[0]
    with pytest.raises(NoObjectsError, match="image array #1"):
        answerer.ask_many([(image, questions[0].text), (blank, "How many objects are there?")])
