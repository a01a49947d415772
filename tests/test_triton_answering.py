"""The torch-free batch answering used inside the `answer` model, checked without a server."""

import io

import numpy as np
import pytest
from PIL import Image
from triton_support import shipped_bundle

from fusionrt.app import Answerer, BundlePipeline
from fusionrt.data.questions import questions_for
from fusionrt.data.world import generate_scene, render, split_seeds
from fusionrt.errors import ImageError, QuestionError
from fusionrt.serve.answering import answer_logits, image_from_bytes, prepare, question_from_bytes, softmax
from fusionrt.serve.python_models import _pad_concat


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return shipped_bundle(tmp_path_factory)


def test_one_padded_batch_answers_like_the_answerer_one_by_one(bundle):
    pipeline, answerer = BundlePipeline(bundle), Answerer(bundle)
    cases = []
    for seed in split_seeds("heldout", 6):
        scene = generate_scene(seed)
        cases += [(render(scene), q.text) for q in questions_for(scene, np.random.default_rng(seed))[:3]]
    prepared = [prepare(image_from_bytes(png(p)), t, pipeline.questions, pipeline.max_visual_len) for p, t in cases]
    assert len({len(p.input_ids) for p in prepared}) > 1 and len({len(p.crops) for p in prepared}) > 1
    probs = softmax(answer_logits(pipeline, prepared, max_batch=4).astype(np.float64))  # 5 fusion calls
    for row, (pixels, text) in enumerate(cases):
        expected = answerer.probabilities(pixels, text)
        np.testing.assert_allclose(probs[row], list(expected.values()), atol=1e-5)


def test_image_bytes_are_decoded_and_checked():
    pixels = render(generate_scene(3))
    assert np.array_equal(image_from_bytes(png(pixels)), pixels)
    with pytest.raises(ImageError, match="Pillow can read"):
        image_from_bytes(b"\x89PNG but not really")
    with pytest.raises(ImageError, match="not resized"):
        image_from_bytes(png(pixels[:64, :64]))
    with pytest.raises(ImageError, match="0 bytes"):
        image_from_bytes(b"")
    with pytest.raises(QuestionError, match="not UTF-8"):
        question_from_bytes(b"\xff\xfe")


def test_pad_concat_pads_every_dynamic_dim_with_zeros():
    a, b = np.ones((2, 3, 4), np.float32), np.full((1, 5, 2), 2, np.float32)
    merged = _pad_concat([a, b])
    assert merged.shape == (3, 5, 4)
    assert merged[:2, :3, :4].min() == 1 and merged[:2, 3:].max() == 0 and merged[:2, :, :].sum() == a.sum()
    assert np.array_equal(merged[2, :5, :2], b[0]) and merged[2, :, 2:].max() == 0
