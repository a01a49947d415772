import pytest

from fusionrt.data.tokenizer import PAD_ID, QuestionEncoder, question_corpus
from fusionrt.errors import QuestionError


def test_round_trip_over_every_template_question(question_encoder):
    tokenizer = question_encoder.tokenizer
    for question in question_corpus():
        ids = question_encoder.encode(question)
        assert ids[0] == tokenizer.token_to_id("[CLS]") and ids[-1] == tokenizer.token_to_id("[SEP]")
        decoded = tokenizer.decode(ids.tolist())
        assert decoded.replace(" ?", "?") == question.lower()


def test_save_and_load(tmp_path, question_encoder):
    path = tmp_path / "tokenizer.json"
    path.write_text(question_encoder.tokenizer.to_str())
    loaded = QuestionEncoder.from_file(path, 32)
    q = "Is the red circle left of the blue square?"
    assert loaded.encode(q).tolist() == question_encoder.encode(q).tolist()


def test_case_and_spacing_do_not_matter(question_encoder):
    a = question_encoder.encode("How many red objects are there?")
    b = question_encoder.encode("  how MANY red objects are there ?")
    assert a.tolist() == b.tolist()


@pytest.mark.parametrize("question", ["", "   ", None])
def test_empty_question_is_refused(question_encoder, question):
    with pytest.raises(QuestionError, match="non-empty"):
        question_encoder.encode(question)


def test_unknown_words_are_named(question_encoder):
    with pytest.raises(QuestionError, match=r"\['magenta'\]"):
        question_encoder.encode("What shape is the magenta object?")


def test_too_long_question_is_refused_not_truncated(question_encoder):
    long = "Is the red circle left of the blue square" + " red circle" * 12 + "?"
    with pytest.raises(QuestionError, match="at most 32 tokens"):
        question_encoder.encode(long)


def test_batch_padding(question_encoder):
    ids, mask = question_encoder.encode_batch(["How many objects are there?", "Is there a red circle?"])
    assert ids.shape == mask.shape and ids.dtype.name == "int64" and mask.dtype == bool
    assert (ids[~mask] == PAD_ID).all() and mask[:, 0].all()
