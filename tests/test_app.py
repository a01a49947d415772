"""The Answerer and the CLI on the shipped checkpoint, including every bad input."""

import json

import numpy as np
import pytest
from PIL import Image

from fusionrt.app import Answerer
from fusionrt.cli import main
from fusionrt.data.questions import questions_for
from fusionrt.data.world import generate_scene, render, split_seeds
from fusionrt.errors import ImageError, NoObjectsError, QuestionError


@pytest.fixture(scope="module")
def answerer():
    return Answerer()


@pytest.fixture(scope="module")
def scene_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "scene.png"
    Image.fromarray(render(generate_scene(split_seeds("heldout", 1, start=500).start))).save(path)
    return path


def test_ask_answers_held_out_questions(answerer):
    correct = total = 0
    for seed in split_seeds("heldout", 30, start=900):
        scene = generate_scene(seed)
        image = render(scene)
        for q in questions_for(scene, np.random.default_rng(seed)):
            answer, probability = answerer.ask(image, q.text)
            assert 0.0 < probability <= 1.0
            correct += answer == q.answer
            total += 1
    assert correct / total > 0.8


def test_path_and_array_give_the_same_answer(answerer, scene_png):
    q = "How many objects are there?"
    assert answerer.ask(scene_png, q) == answerer.ask(np.asarray(Image.open(scene_png)), q)


def test_rgba_and_palette_files_are_converted(answerer, scene_png, tmp_path):
    q = "How many objects are there?"
    expected = answerer.ask(scene_png, q)
    rgba = tmp_path / "rgba.png"
    Image.open(scene_png).convert("RGBA").save(rgba)
    assert answerer.ask(rgba, q)[0] == expected[0]


def test_probabilities_sum_to_one(answerer, scene_png):
    probs = answerer.probabilities(scene_png, "What shape is the red object?")
    assert len(probs) == 22 and abs(sum(probs.values()) - 1) < 1e-6


@pytest.mark.parametrize(
    ("image", "match"),
    [
        ("/nonexistent/scene.png", "no file"),
        (np.zeros((64, 64, 3), dtype=np.uint8), "64x64"),
        (np.zeros((128, 128), dtype=np.uint8), "HxWx3 uint8"),
        (np.zeros((128, 128, 3), dtype=np.float32), "HxWx3 uint8"),
        (42, "path or an HxWx3"),
    ],
)
def test_bad_images_are_refused(answerer, image, match):
    with pytest.raises(ImageError, match=match):
        answerer.ask(image, "How many objects are there?")


def test_unreadable_and_wrong_size_files(answerer, tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(ImageError, match="Pillow can read"):
        answerer.ask(junk, "How many objects are there?")
    big = tmp_path / "big.png"
    Image.fromarray(np.full((256, 256, 3), 235, dtype=np.uint8)).save(big)
    with pytest.raises(ImageError, match="not resized"):
        answerer.ask(big, "How many objects are there?")


@pytest.mark.parametrize(
    ("question", "match"),
    [("", "non-empty"), ("What colour is the circle?", "colour"), ("Is there a red circle " * 7, "at most")],
)
def test_bad_questions_are_refused(answerer, scene_png, question, match):
    with pytest.raises(QuestionError, match=match):
        answerer.ask(scene_png, question)


def test_scene_without_objects_is_refused(answerer):
    with pytest.raises(NoObjectsError, match="no object detected"):
        answerer.ask(np.full((128, 128, 3), 235, dtype=np.uint8), "How many objects are there?")


def test_cli_render_then_ask(tmp_path, capsys):
    out = tmp_path / "s.png"
    assert main(["render", "--seed", "3", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and "expected:" in printed
    assert main(["ask", str(out), "How many objects are there?", "--json", "-"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["answer"] == str(len(generate_scene(3).objects))


def test_cli_reports_bad_input_with_exit_status_2(tmp_path, capsys):
    assert main(["ask", str(tmp_path / "missing.png"), "How many objects are there?"]) == 2
    assert "no file" in capsys.readouterr().err
