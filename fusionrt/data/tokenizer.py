"""WordPiece tokenizer of the question language, trained with the ``tokenizers`` library.

Encoding is strict: a question must be non-empty, use only words the tokenizer knows as whole
tokens, and fit ``max_text_len`` tokens including [CLS] and [SEP]. Anything else raises
:class:`fusionrt.errors.QuestionError`; nothing is truncated, because a cut question can get a
confident answer to a different question.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from fusionrt.data.world import COLORS, SHAPES, SIZES
from fusionrt.errors import QuestionError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
PAD_ID = 0
# Every question template names something in the scene: a color, a shape (or its plural), a size or
# "object(s)". A question without any of them ("?", "How") has no content, yet the model answers it
# confidently, so it is refused.
CONTENT_WORDS = frozenset([*COLORS, *SHAPES, *(f"{s}s" for s in SHAPES), *SIZES, "object", "objects"])


def question_corpus() -> list[str]:
    """Every question the templates can produce (the tokenizer's training corpus)."""
    colors, shapes, sizes = list(COLORS), list(SHAPES), list(SIZES)
    out = [f"What color is the {s}?" for s in shapes]
    out += [f"What color is the {z} {s}?" for z, s in itertools.product(sizes, shapes)]
    out += [f"What shape is the {c} object?" for c in colors]
    out += [f"What size is the {c} {s}?" for c, s in itertools.product(colors, shapes)]
    out += [f"How many {c} objects are there?" for c in colors]
    out += [f"How many {s}s are there?" for s in shapes]
    out += ["How many objects are there?"]
    out += [f"Is there a {c} {s}?" for c, s in itertools.product(colors, shapes)]
    pairs = list(itertools.product(colors, shapes))
    out += [f"Is the {c1} {s1} left of the {c2} {s2}?" for (c1, s1), (c2, s2) in itertools.permutations(pairs, 2)]
    return out


def train_tokenizer(corpus: list[str] | None = None, vocab_size: int = 128) -> Tokenizer:
    """Train a lower-casing WordPiece tokenizer that adds [CLS] ... [SEP]."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS))
    tokenizer.train_from_iterator(corpus or question_corpus(), trainer=trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return tokenizer


class QuestionEncoder:
    """Turns questions into ``input_ids`` / ``text_mask`` arrays, refusing what it cannot encode."""

    def __init__(self, tokenizer: Tokenizer, max_text_len: int) -> None:
        if tokenizer.token_to_id("[PAD]") != PAD_ID:
            raise ValueError("tokenizer: expected [PAD] to have id 0")
        self.tokenizer = tokenizer
        self.max_text_len = max_text_len

    @classmethod
    def from_file(cls, path: str | Path, max_text_len: int) -> QuestionEncoder:
        try:
            return cls(Tokenizer.from_file(str(path)), max_text_len)
        except Exception as exc:  # tokenizers raises bare Exception subclasses
            raise QuestionError("tokenizer.json", "a tokenizer saved by the tokenizers library",
                                f"{path} ({exc})") from exc

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def _unknown_word_ids(self, encoding) -> set[int]:
        """Words that are [UNK] or split into pieces: the model never saw them in training."""
        unk_id = self.tokenizer.token_to_id("[UNK]")
        unknown = set()
        for word_id in {w for w in encoding.word_ids if w is not None}:
            first, last = encoding.word_to_tokens(word_id)
            if last - first != 1 or encoding.ids[first] == unk_id:
                unknown.add(word_id)
        return unknown

    def encode(self, question: str) -> np.ndarray:
        """Token ids (int64) of one question, [CLS] and [SEP] included."""
        if not isinstance(question, str) or not question.strip():
            raise QuestionError("question", "a non-empty string", repr(question))
        encoding = self.tokenizer.encode(question)
        unknown = sorted({question[slice(*encoding.word_to_chars(w))] for w in self._unknown_word_ids(encoding)})
        if unknown:
            raise QuestionError(
                "question", "only words of the question templates (see README), each a whole token",
                f"unknown word(s) {unknown} in {question!r}",
            )
        words = [question[slice(*encoding.word_to_chars(w))] for w in sorted(set(encoding.word_ids) - {None})]
        special = [w for w in words if w in SPECIAL_TOKENS]
        if special:
            raise QuestionError("question", "words of the question templates (special tokens are added by the "
                                            "encoder, never typed)", f"special token(s) {special} in {question!r}")
        if not CONTENT_WORDS & {w.lower() for w in words}:
            raise QuestionError("question", "at least one word naming something in the scene (a color, shape, "
                                            "size or 'objects')", f"none in {question!r}")
        if len(encoding.ids) > self.max_text_len:
            raise QuestionError(
                "question", f"at most {self.max_text_len} tokens including [CLS] and [SEP]",
                f"{len(encoding.ids)} tokens in {question!r}",
            )
        return np.asarray(encoding.ids, dtype=np.int64)

    def encode_batch(self, questions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """``input_ids`` int64 [B,T] padded with [PAD] and ``text_mask`` bool [B,T]."""
        encoded = [self.encode(q) for q in questions]
        length = max(len(e) for e in encoded)
        input_ids = np.full((len(encoded), length), PAD_ID, dtype=np.int64)
        text_mask = np.zeros((len(encoded), length), dtype=bool)
        for row, ids in enumerate(encoded):
            input_ids[row, : len(ids)] = ids
            text_mask[row, : len(ids)] = True
        return input_ids, text_mask
