"""``fusionrt export`` and ``fusionrt ask --bundle`` on a small random checkpoint, and their errors."""

import json

import pytest
import torch

from fusionrt.cli import main
from fusionrt.data.world import ANSWERS, generate_scene, render
from fusionrt.model import Checkpoint, FusionConfig, FusionModel, RegionEncoder, save_checkpoint
from fusionrt.runtime import Bundle


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, question_encoder):
    torch.manual_seed(0)
    config = FusionConfig(vocab_size=question_encoder.vocab_size, hidden=32, layers=2, heads=4, ffn=64)
    return save_checkpoint(Checkpoint(FusionModel(config).eval(), RegionEncoder().eval(), question_encoder,
                                      list(ANSWERS)), tmp_path_factory.mktemp("cli") / "checkpoint")


@pytest.fixture(scope="module")
def bundle(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "bundle"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--max-batch", "16"]) == 0
    return out


def test_cli_export_writes_a_verified_bundle(bundle, capsys):
    manifest = Bundle.open(bundle).manifest
    assert manifest["graphs"]["fusion"]["inputs"][0]["dynamic"]["B"]["max"] == 16
    assert set(manifest["verification"]["graphs"]) == {"fusion", "region_encoder"}


def test_cli_export_prints_what_it_verified(checkpoint, tmp_path, capsys):
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "b"), "--json", "-"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["opset"] == 17 and result["verification"]["graphs"]["fusion"]["points"] == 28
    assert captured.err == ""  # progress bars are drawn only when stderr is a terminal (capsys is not)


def test_cli_export_of_a_missing_checkpoint_is_an_error(tmp_path, capsys):
    assert main(["export", "--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path / "b")]) == 2
    assert "config.json: expected a file" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_cli_ask_with_bundle_and_backends(bundle, tmp_path, capsys):
    from PIL import Image

    image = tmp_path / "scene.png"
    Image.fromarray(render(generate_scene(5))).save(image)
    answers = []
    for backend in ("onnxruntime", "torch"):
        assert main(["ask", str(image), "How many objects are there?", "--bundle", str(bundle), "--backend", backend,
                     "--json", "-"]) == 0
        answers.append(json.loads(capsys.readouterr().out))
    assert answers[0]["answer"] == answers[1]["answer"]
    assert abs(answers[0]["probability"] - answers[1]["probability"]) < 1e-5


def test_cli_ask_with_a_directory_that_is_not_a_bundle(checkpoint, tmp_path, capsys):
    image = tmp_path / "scene.png"
    from PIL import Image

    Image.fromarray(render(generate_scene(5))).save(image)
    assert main(["ask", str(image), "How many objects are there?", "--bundle", str(checkpoint)]) == 2
    assert "manifest.json: expected a file in" in capsys.readouterr().err


def test_cli_ask_refuses_checkpoint_and_bundle_together(bundle, checkpoint, capsys):
    with pytest.raises(SystemExit):
        main(["ask", "x.png", "q?", "--bundle", str(bundle), "--checkpoint", str(checkpoint)])
    assert "not allowed with argument" in capsys.readouterr().err
