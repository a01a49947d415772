"""The shipped caption model: its packaged bundle, torch-free generation on ONNX Runtime, parity with PyTorch,
and fusionrt caption."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fusionrt.app import SHIPPED_BUNDLE
from fusionrt.bundle.manifest import Bundle
from fusionrt.caption.captioner import SHIPPED_CAPTION_BUNDLE, Captioner
from fusionrt.data.captions import caption_text
from fusionrt.data.world import generate_scene, render, split_seeds
from fusionrt.errors import BundleError, InputError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def captioner():
    return Captioner()


@pytest.fixture(scope="module")
def heldout():
    scenes = [generate_scene(seed) for seed in split_seeds("heldout", 48, start=1500)]
    return [render(s) for s in scenes], [caption_text(s) for s in scenes]


def _normal(text):
    return text.replace(" ,", ",")


def test_packaged_caption_bundle_verifies_and_comes_from_the_shipped_checkpoint():
    from fusionrt.bundle.source import checkpoint_files_sha256
    from fusionrt.model.caption_checkpoint import SHIPPED_CAPTION_CHECKPOINT

    bundle = Bundle.open(SHIPPED_CAPTION_BUNDLE)
    assert bundle.task == "caption"
    assert bundle.manifest["source"]["files"] == checkpoint_files_sha256(SHIPPED_CAPTION_CHECKPOINT), \
        "fusionrt/assets/caption-bundle is stale: rerun scripts/make_caption_bundle.py"
    assert bundle.manifest["verification"]["graphs"]["caption_step"]["worst"]["logits"]["max_abs"] < 1e-4


def test_shipped_captions_are_exact_on_heldout_scenes_greedy_and_beam(captioner, heldout):
    images, truth = heldout
    greedy = captioner.caption_many(images)
    assert [_normal(c) for c in greedy] == [_normal(t) for t in truth]
    assert captioner.caption_many(images[:8], beam=3) == greedy[:8]
    assert "".join(" " + t if not t.startswith("##") else t[2:] for t in captioner.stream(images[0])).strip() \
        .replace(" ,", ",") == _normal(truth[0])


def test_runtime_greedy_is_token_identical_to_pytorch_with_logits_close(captioner, heldout):
    import torch

    from fusionrt.model.caption_checkpoint import load_caption_checkpoint
    from fusionrt.model.caption_decode import greedy_torch

    images, _ = heldout
    decoder = load_caption_checkpoint().decoder
    visual, mask = captioner.visual_inputs(images[:16])
    reference, logits = greedy_torch(decoder, torch.from_numpy(visual), torch.from_numpy(mask), return_logits=True,
                                     use_cache=False)
    assert captioner.token_ids_many(images[:16]) == reference
    captioner.stepper.start(visual, mask)
    ids = np.full((16, 1), decoder.config.bos_id, dtype=np.int64)
    for step, expected in enumerate(logits):  # teacher-forced along the PyTorch tokens: every step's logits
        got = captioner.stepper.step(ids)[:, -1]
        assert np.abs(got - expected.numpy()).max() < 1e-4, step
        ids = expected.numpy().argmax(-1)[:, None]


def test_captioner_refuses_a_vqa_bundle_and_bad_options(captioner, heldout):
    with pytest.raises(BundleError, match="caption"):
        Captioner(SHIPPED_BUNDLE)
    with pytest.raises(InputError, match="max_new_tokens"):
        captioner.caption(heldout[0][0], max_new_tokens=0)
    with pytest.raises(InputError, match="beam"):
        captioner.caption(heldout[0][0], beam=0)
    assert len(captioner.token_ids_many(heldout[0][:2], max_new_tokens=3)[0]) == 3


def test_cli_caption_prints_the_caption_without_importing_torch(tmp_path):
    scene = generate_scene(int(split_seeds("heldout", 1, start=77)[0]))
    image = tmp_path / "scene.png"
    Image.fromarray(render(scene)).save(image)
    code = ("import sys; from fusionrt.cli import main\n"
            "rc = main(['caption', sys.argv[1], '--json', '-'])\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            "sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code, str(image)], capture_output=True, text=True, cwd=REPO,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert _normal(json.loads(result.stdout)["captions"][0]["caption"]) == _normal(caption_text(scene))


def test_cli_parity_on_a_caption_bundle_reports_steps_and_its_logit_gate_can_fail(tmp_path):
    from fusionrt.cli import main

    report_path = tmp_path / "parity.json"
    assert main(["parity", str(SHIPPED_CAPTION_BUNDLE), "--scenes", "16", "-q", "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["task"] == "caption" and report["token_identical"] == 1.0
    assert len(report["per_step_logits_max_abs"]) >= 20 and max(report["per_step_logits_max_abs"]) < 1e-4
    assert report["exact_match"]["candidate"] == 1.0
    # a logit tolerance no float32 run meets must fail the gate (exit 1), naming it
    assert main(["parity", str(SHIPPED_CAPTION_BUNDLE), "--scenes", "16", "-q", "--atol", "1e-12",
                 "--json", str(report_path)]) == 1
    assert not json.loads(report_path.read_text())["gates"]["logits_max_abs"]["passed"]



def test_openvino_stepper_decodes_like_onnxruntime_with_close_logits(captioner, heldout):
    pytest.importorskip("openvino")
    from fusionrt.caption.generate import beam_search, greedy
    from fusionrt.caption.steppers import OpenVinoStepper

    visual, mask = captioner.visual_inputs(heldout[0][:6])
    openvino = OpenVinoStepper(Bundle.open(SHIPPED_CAPTION_BUNDLE))
    kwargs = {"bos": captioner.bos, "eos": captioner.eos, "max_new_tokens": captioner.max_new_tokens}
    assert greedy(openvino, visual, mask, **kwargs) == greedy(captioner.stepper, visual, mask, **kwargs)
    assert beam_search(openvino, visual, mask, width=2, **kwargs)[0][0] == \
        beam_search(captioner.stepper, visual, mask, width=2, **kwargs)[0][0]
    openvino.start(visual, mask)
    captioner.stepper.start(visual, mask)
    ids = np.full((6, 1), captioner.bos, dtype=np.int64)
    for _ in range(10):
        a, b = openvino.step(ids)[:, -1], captioner.stepper.step(ids)[:, -1]
        assert np.abs(a - b).max() < 1e-4
        ids = b.argmax(-1)[:, None]
