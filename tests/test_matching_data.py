"""Matching data: query texts, relevance from the ground truth, one-attribute hard negatives, the held-out
database."""

import numpy as np
import pytest

from fusionrt.data.matching import (
    MatchQuery,
    Phrase,
    hard_negative,
    heldout_database,
    match_corpus,
    one_attribute_changes,
    query_for_scene,
)
from fusionrt.data.tokenizer import QuestionEncoder, train_tokenizer
from fusionrt.data.world import Scene, SceneObject, generate_scene

SCENE = Scene(seed=0, objects=(
    SceneObject("circle", "red", "small", 20, 60), SceneObject("square", "green", "large", 60, 60),
    SceneObject("triangle", "yellow", "small", 100, 60), SceneObject("circle", "blue", "large", 60, 20),
    SceneObject("square", "blue", "small", 30, 100),
))


@pytest.mark.parametrize(("query", "text", "relevant"), [
    (MatchQuery("object", (Phrase("red", "circle", "small"),)), "a small red circle", True),
    (MatchQuery("object", (Phrase("red", "circle", "large"),)), "a large red circle", False),
    (MatchQuery("count", (Phrase("blue"),), 2), "two blue objects", True),
    (MatchQuery("count", (Phrase("blue"),), 3), "three blue objects", False),
    (MatchQuery("count", (Phrase(shape="circle"),), 2), "two circles", True),
    (MatchQuery("relation", (Phrase("green", "square"), Phrase("yellow", "triangle"))),
     "a green square left of a yellow triangle", True),
    (MatchQuery("relation", (Phrase("yellow", "triangle"), Phrase("green", "square"))),
     "a yellow triangle left of a green square", False),
    (MatchQuery("relation", (Phrase(shape="circle"), Phrase(shape="circle"))), "a circle left of a circle", True),
    (MatchQuery("relation", (Phrase(shape="square"), Phrase("red", "circle"))), "a square left of a red circle",
     False),
])
def test_text_and_relevance_follow_the_ground_truth(query, text, relevant):
    assert query.text == text
    assert query.relevant(SCENE) is relevant


def test_hard_negatives_differ_in_one_attribute_and_are_irrelevant():
    rng = np.random.default_rng(0)
    for seed in range(200):
        scene = generate_scene(seed)
        query = query_for_scene(scene, rng)
        if query is None:
            continue
        assert query.relevant(scene)
        negative = hard_negative(query, scene, rng)
        if negative is None:
            continue
        assert not negative.relevant(scene)
        assert negative in one_attribute_changes(query)
        differences = sum(a != b for p, q in zip(query.phrases, negative.phrases, strict=True)
                          for a, b in zip((p.color, p.shape, p.size), (q.color, q.shape, q.size), strict=True))
        assert differences + (query.count != negative.count) == 1


def test_every_query_text_encodes_as_whole_words():
    encoder = QuestionEncoder(train_tokenizer(match_corpus()), 32)
    rng = np.random.default_rng(1)
    texts = [q.text for s in range(300) if (q := query_for_scene(generate_scene(s), rng)) is not None]
    ids, _ = encoder.encode_batch(texts)  # raises on a word the tokenizer splits or does not know
    assert len(ids) == len(texts)


def test_heldout_database_is_deterministic_and_every_query_has_a_relevant_scene():
    first, second = heldout_database(400, 60), heldout_database(400, 60)
    assert [q.text for q in first.queries] == [q.text for q in second.queries]
    assert np.array_equal(first.relevance, second.relevance)
    assert first.relevance.shape == (60, 400)
    assert first.relevance[np.arange(60), first.source_scene].all()
    scenes = [generate_scene(s) for s in first.seeds]
    assert first.relevance[3].tolist() == [first.queries[3].relevant(s) for s in scenes]
