"""Image-text matching data in the scene world: queries that describe part of a scene, their relevance
to any scene computed from the ground truth, and hard negatives that differ from a true query in one
attribute.

Three query kinds:
- ``object``: "a small red circle", "a red object", "a large square": some object has every named attribute;
- ``count``: "two blue objects", "three circles": exactly that many objects have the named attributes;
- ``relation``: "a green square left of a yellow triangle": an object matching the first phrase has its
  centre left of an object matching the second.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import numpy as np

from fusionrt.data.world import COLORS, SHAPES, SIZES, Scene, SceneObject, generate_scene, split_seeds

QUERY_KINDS = ("object", "count", "relation")
NUMBER_WORDS = {2: "two", 3: "three", 4: "four"}


@dataclass(frozen=True)
class Phrase:
    """A description of one object; ``None`` leaves an attribute open."""

    color: str | None = None
    shape: str | None = None
    size: str | None = None

    def matches(self, obj: SceneObject) -> bool:
        return ((self.color is None or obj.color == self.color) and (self.shape is None or obj.shape == self.shape)
                and (self.size is None or obj.size == self.size))

    def words(self, plural: bool = False) -> str:
        noun = self.shape or "object"
        return " ".join(w for w in (self.size, self.color, noun + ("s" if plural else "")) if w)


@dataclass(frozen=True)
class MatchQuery:
    """A query: its kind, its phrases (two for a relation) and, for ``count``, the number."""

    kind: str
    phrases: tuple[Phrase, ...]
    count: int = 0

    @property
    def text(self) -> str:
        if self.kind == "count":
            return f"{NUMBER_WORDS[self.count]} {self.phrases[0].words(plural=True)}"
        if self.kind == "relation":
            return f"a {self.phrases[0].words()} left of a {self.phrases[1].words()}"
        return f"a {self.phrases[0].words()}"

    def relevant(self, scene: Scene) -> bool:
        """Whether ``scene`` shows what the query describes (the ground truth, not the pixels)."""
        first = [o for o in scene.objects if self.phrases[0].matches(o)]
        if self.kind == "count":
            return len(first) == self.count
        if self.kind == "relation":
            second = [o for o in scene.objects if self.phrases[1].matches(o)]
            return any(a is not b and a.x < b.x for a in first for b in second)
        return bool(first)


def _phrase_of(obj: SceneObject, rng: np.random.Generator) -> Phrase:
    """A phrase true of ``obj``: colour and shape usually, size sometimes, at least one attribute."""
    keep = rng.random(3) < (0.85, 0.75, 0.45)
    if not keep[:2].any():
        keep[rng.integers(2)] = True
    return Phrase(obj.color if keep[0] else None, obj.shape if keep[1] else None, obj.size if keep[2] else None)


def query_for_scene(scene: Scene, rng: np.random.Generator, kind: str | None = None) -> MatchQuery | None:
    """A query of ``kind`` (random if None) relevant to ``scene``, or None if the scene allows none."""
    if not scene.objects:
        return None
    kind = kind or QUERY_KINDS[rng.choice(3, p=(0.45, 0.25, 0.30))]
    if kind == "object":
        return MatchQuery("object", (_phrase_of(scene.objects[rng.integers(len(scene.objects))], rng),))
    if kind == "count":
        for _ in range(6):
            obj = scene.objects[rng.integers(len(scene.objects))]
            phrase = _phrase_of(obj, rng)
            number = sum(phrase.matches(o) for o in scene.objects)
            if number in NUMBER_WORDS:
                return MatchQuery("count", (phrase,), number)
        return None
    if kind == "relation":
        pairs = [(a, b) for a, b in itertools.permutations(scene.objects, 2) if a.x < b.x]
        if not pairs:
            return None
        a, b = pairs[rng.integers(len(pairs))]
        return MatchQuery("relation", (_phrase_of(a, rng), _phrase_of(b, rng)))
    raise ValueError(f"kind: expected one of {QUERY_KINDS}, received {kind!r}")


_VALUES = {"color": tuple(COLORS), "shape": SHAPES, "size": tuple(SIZES)}


def one_attribute_changes(query: MatchQuery) -> list[MatchQuery]:
    """Every query that differs from ``query`` in exactly one named attribute (or, for ``count``, the number)."""
    out = []
    for index, phrase in enumerate(query.phrases):
        for attribute, values in _VALUES.items():
            current = getattr(phrase, attribute)
            if current is None:
                continue
            for value in values:
                if value != current:
                    phrases = list(query.phrases)
                    phrases[index] = replace(phrase, **{attribute: value})
                    out.append(replace(query, phrases=tuple(phrases)))
    if query.kind == "count":
        out += [replace(query, count=n) for n in NUMBER_WORDS if n != query.count]
    return out


def hard_negative(query: MatchQuery, scene: Scene, rng: np.random.Generator) -> MatchQuery | None:
    """A query one attribute away from ``query`` that ``scene`` does not show, or None if every change
    still holds for it."""
    candidates = [q for q in one_attribute_changes(query) if not q.relevant(scene)]
    return candidates[rng.integers(len(candidates))] if candidates else None


def match_corpus() -> list[str]:
    """Every word the query grammar uses, in phrases the tokenizer is trained on."""
    colors, shapes, sizes = list(COLORS), list(SHAPES), list(SIZES)
    phrases = [Phrase(c, s, z) for c in (None, *colors) for s in (None, *shapes) for z in (None, *sizes)
               if c is not None or s is not None]
    out = [MatchQuery("object", (p,)).text for p in phrases]
    out += [MatchQuery("count", (p,), n).text for p in phrases for n in NUMBER_WORDS]
    out += [MatchQuery("relation", (p, q)).text for p, q in itertools.product(phrases[:40], phrases[-40:])]
    return out


def relevance_matrix(queries: list[MatchQuery], scenes: list[Scene]) -> np.ndarray:
    """bool [Q,S]: whether scene s shows what query q describes."""
    return np.array([[q.relevant(s) for s in scenes] for q in queries], dtype=bool).reshape(len(queries), len(scenes))


@dataclass
class MatchDatabase:
    """A deterministic held-out database: scenes (by seed), queries, relevance [Q,S] and, per query, a hard
    negative drawn against its source scene (for ITM ROC-AUC)."""

    seeds: list[int]
    queries: list[MatchQuery]
    source_scene: np.ndarray  # int64 [Q]: the scene each query was drawn from
    hard_negatives: list[MatchQuery | None]
    relevance: np.ndarray  # bool [Q,S]


def heldout_database(scenes: int = 5000, queries: int = 500, split: str = "heldout", seed: int = 0,
                     start: int = 0) -> MatchDatabase:
    """``scenes`` scenes of ``split`` and ``queries`` queries, each drawn from one of them (so at least one
    image is relevant), with relevance over the whole database. Same arguments, same database."""
    seeds = list(split_seeds(split, scenes, start))
    world = [generate_scene(s) for s in seeds]
    rng = np.random.default_rng(seed + 7)
    drawn, sources, negatives = [], [], []
    while len(drawn) < queries:
        source = int(rng.integers(len(world)))
        query = query_for_scene(world[source], rng)
        if query is None or query.text in {q.text for q in drawn[-50:]}:
            continue
        drawn.append(query)
        sources.append(source)
        negatives.append(hard_negative(query, world[source], rng))
    return MatchDatabase(seeds, drawn, np.asarray(sources, dtype=np.int64), negatives,
                         relevance_matrix(drawn, world))
