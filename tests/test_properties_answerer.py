"""Property: any image (bytes on disk, array of any shape and dtype) and any question through Answerer.ask
gives an answer with a probability, or a FusionrtError subclass; nothing else."""

import math

import numpy as np
import pytest
from hardening_support import _register_profiles  # noqa: F401 - loads the hypothesis profile
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fusionrt.app import Answerer
from fusionrt.data.world import generate_scene, render
from fusionrt.errors import FusionrtError

SCENE = render(generate_scene(7))
QUESTION = "How many objects are there?"


@pytest.fixture(scope="module")
def answerer():
    return Answerer()


def _check(answerer, image, question):
    try:
        answer, probability = answerer.ask(image, question)
    except FusionrtError:
        return
    assert answer in answerer.pipeline.answers
    assert math.isfinite(probability) and 0.0 <= probability <= 1.0


@given(st.binary(max_size=4096) | st.just(b"\x89PNG\r\n\x1a\n").map(lambda h: h + bytes(range(256)) * 4))
def test_any_bytes_as_an_image_file(answerer, tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("img") / "image.png"
    path.write_bytes(blob)
    _check(answerer, path, QUESTION)


@given(hnp.arrays(st.sampled_from([np.uint8, np.float32, np.float64, np.int16, np.bool_, np.int64]),
                  hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6)))
def test_any_small_array_as_an_image(answerer, array):
    _check(answerer, array, QUESTION)


@given(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 2, 255]))
def test_noise_and_flat_images_of_the_right_shape(answerer, seed, fill):
    rng = np.random.default_rng(seed)
    image = SCENE.copy()
    corner = image[:24, :24]  # salt noise in one corner: many tiny or touching "objects", cheap to detect
    corner[rng.random(corner.shape[:2]) < 0.3] = fill
    _check(answerer, image, QUESTION)


@given(st.text(max_size=64) | st.text(min_size=5000, max_size=20000) | st.sampled_from(["", " ", "\x00", "\u202e?",
                                                                                       "what color?" * 500]))
def test_any_question(answerer, question):
    _check(answerer, SCENE, question)
