import numpy as np
import pytest

from fusionrt.data.questions import QUESTION_KINDS, ask_question, questions_for
from fusionrt.data.world import ANSWERS, COLORS, IMAGE_SIZE, SHAPES, generate_scene, render, split_seeds


def test_scene_is_reproducible_from_its_seed():
    a, b = generate_scene(42), generate_scene(42)
    assert a == b
    assert np.array_equal(render(a), render(b))
    assert generate_scene(43) != a


def test_objects_do_not_overlap_and_stay_inside():
    for seed in range(300):
        scene = generate_scene(seed)
        assert 1 <= len(scene.objects) <= 8
        boxes = [o.box for o in scene.objects]
        for x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= IMAGE_SIZE and 0 <= y0 < y1 <= IMAGE_SIZE
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def test_rendered_image_format_and_colors():
    scene = generate_scene(5)
    image = render(scene)
    assert image.shape == (128, 128, 3) and image.dtype == np.uint8
    for obj in scene.objects:  # the box centre of every shape is painted in its colour
        assert tuple(image[obj.y, obj.x]) == COLORS[obj.color]


def test_splits_are_disjoint():
    train, heldout, calibration = (set(split_seeds(s, 1000)) for s in ("train", "heldout", "calibration"))
    assert not train & heldout and not train & calibration and not heldout & calibration
    with pytest.raises(ValueError, match="seeds"):
        split_seeds("train", 2_000_000)


def _matching(scene, **attrs):
    return [o for o in scene.objects if all(getattr(o, k) == v for k, v in attrs.items())]


def test_questions_refer_to_exactly_one_object_and_answers_are_correct():
    rng = np.random.default_rng(0)
    seen_kinds = set()
    for seed in range(300):
        scene = generate_scene(seed)
        for q in questions_for(scene, rng):
            seen_kinds.add(q.kind)
            assert q.answer in ANSWERS
            words = q.text.rstrip("?").split()
            if q.kind == "shape":
                (obj,) = _matching(scene, color=words[4])
                assert q.answer == obj.shape
            elif q.kind == "size":
                (obj,) = _matching(scene, color=words[4], shape=words[5])
                assert q.answer == obj.size
            elif q.kind == "color":
                attrs = {"shape": words[-1]} if len(words) == 5 else {"size": words[4], "shape": words[5]}
                (obj,) = _matching(scene, **attrs)
                assert q.answer == obj.color
                if len(words) == 6:  # the size is only named when the shape alone is ambiguous
                    assert len(_matching(scene, shape=words[5])) > 1
            elif q.kind == "left_of":
                (a,) = _matching(scene, color=words[2], shape=words[3])
                (b,) = _matching(scene, color=words[7], shape=words[8])
                assert q.answer == ("yes" if a.x < b.x else "no")
            elif q.kind == "count_all":
                assert q.answer == str(len(scene.objects))
    assert seen_kinds == set(QUESTION_KINDS)


def test_exists_questions_are_balanced():
    rng = np.random.default_rng(1)
    answers = [ask_question(generate_scene(s), "exists", rng).answer for s in range(400)]
    assert 0.4 < answers.count("yes") / len(answers) < 0.6
    assert set(SHAPES) and len(ANSWERS) == 22
