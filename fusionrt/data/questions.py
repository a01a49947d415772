"""Question templates over a scene, with the unique-reference rule of the scene world."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fusionrt.data.world import COLORS, SHAPES, Scene, SceneObject


@dataclass(frozen=True)
class Question:
    """A question, its answer, its kind, and the objects its phrases name, in order."""

    text: str
    answer: str
    kind: str
    referents: tuple[SceneObject, ...] = ()


QUESTION_KINDS = (
    "color", "shape", "size", "count_color", "count_shape", "count_all", "exists", "left_of",
)


def _color_question(scene: Scene, rng: np.random.Generator) -> Question | None:
    shape_unique = [o for o in scene.objects if sum(p.shape == o.shape for p in scene.objects) == 1]
    size_shape_unique = [
        o for o in scene.objects
        if o not in shape_unique and sum((p.size, p.shape) == (o.size, o.shape) for p in scene.objects) == 1
    ]
    choices = [(o, f"What color is the {o.shape}?") for o in shape_unique]
    choices += [(o, f"What color is the {o.size} {o.shape}?") for o in size_shape_unique]
    if not choices:
        return None
    obj, text = choices[rng.integers(len(choices))]
    return Question(text, obj.color, "color", (obj,))


def _shape_question(scene: Scene, rng: np.random.Generator) -> Question | None:
    pool = [o for o in scene.objects if sum(p.color == o.color for p in scene.objects) == 1]
    if not pool:
        return None
    obj = pool[rng.integers(len(pool))]
    return Question(f"What shape is the {obj.color} object?", obj.shape, "shape", (obj,))


def _color_shape_unique(scene: Scene) -> list[SceneObject]:
    return [o for o in scene.objects if sum((p.color, p.shape) == (o.color, o.shape) for p in scene.objects) == 1]


def _size_question(scene: Scene, rng: np.random.Generator) -> Question | None:
    pool = _color_shape_unique(scene)
    if not pool:
        return None
    obj = pool[rng.integers(len(pool))]
    return Question(f"What size is the {obj.color} {obj.shape}?", obj.size, "size", (obj,))


def _count_color(scene: Scene, rng: np.random.Generator) -> Question:
    color = list(COLORS)[rng.integers(len(COLORS))]
    n = sum(o.color == color for o in scene.objects)
    return Question(f"How many {color} objects are there?", str(n), "count_color")


def _count_shape(scene: Scene, rng: np.random.Generator) -> Question:
    shape = SHAPES[rng.integers(len(SHAPES))]
    n = sum(o.shape == shape for o in scene.objects)
    return Question(f"How many {shape}s are there?", str(n), "count_shape")


def _count_all(scene: Scene, rng: np.random.Generator) -> Question:
    return Question("How many objects are there?", str(len(scene.objects)), "count_all")


def _exists(scene: Scene, rng: np.random.Generator) -> Question:
    present = sorted({(o.color, o.shape) for o in scene.objects})
    if rng.random() < 0.5:  # balance yes and no
        color, shape = present[rng.integers(len(present))]
    else:
        absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
        color, shape = absent[rng.integers(len(absent))]
    answer = "yes" if (color, shape) in present else "no"
    return Question(f"Is there a {color} {shape}?", answer, "exists")


def _left_of(scene: Scene, rng: np.random.Generator) -> Question | None:
    pool = _color_shape_unique(scene)
    if len(pool) < 2:
        return None
    i, j = rng.choice(len(pool), size=2, replace=False)
    a, b = pool[i], pool[j]
    answer = "yes" if a.x < b.x else "no"
    return Question(f"Is the {a.color} {a.shape} left of the {b.color} {b.shape}?", answer, "left_of", (a, b))


_GENERATORS: dict[str, Callable[[Scene, np.random.Generator], Question | None]] = {
    "color": _color_question, "shape": _shape_question, "size": _size_question,
    "count_color": _count_color, "count_shape": _count_shape, "count_all": _count_all,
    "exists": _exists, "left_of": _left_of,
}


def ask_question(scene: Scene, kind: str, rng: np.random.Generator) -> Question | None:
    """One question of ``kind`` about ``scene``, or None if the scene allows none of that kind."""
    if kind not in _GENERATORS:
        raise ValueError(f"kind: expected one of {QUESTION_KINDS}, received {kind!r}")
    return _GENERATORS[kind](scene, rng)


def questions_for(scene: Scene, rng: np.random.Generator, per_kind: int | dict[str, int] = 1) -> list[Question]:
    """Up to ``per_kind`` distinct questions of every kind that the scene allows (a dict sets it per kind)."""
    out: list[Question] = []
    for kind in QUESTION_KINDS:
        wanted = per_kind.get(kind, 1) if isinstance(per_kind, dict) else per_kind
        seen: set[str] = set()
        for _ in range(wanted * 3):
            if len(seen) >= wanted:
                break
            q = ask_question(scene, kind, rng)
            if q is not None and q.text not in seen:
                seen.add(q.text)
                out.append(q)
    return out
