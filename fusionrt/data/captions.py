"""Captions of the scene world: a deterministic grammar that names every object, left to right.

``caption_text(scene)`` is ``"a large red circle , a small blue square and a small green triangle"``:
each object as ``a {size} {color} {shape}``, joined by ``,`` with ``and`` before the last. The order is
the order of the objects' leftmost painted pixel column, then topmost painted row: exactly the
``(x0, y0)`` of the box the detector finds from the pixels, so the regions sorted by
:func:`region_order` meet the objects in caption order. With [CLS] as BOS and [SEP] as EOS a caption is
6 tokens (one object) to 41 (eight).
"""

from __future__ import annotations

import itertools

import numpy as np

from fusionrt.data.world import COLORS, SHAPES, SIZES, Scene, SceneObject, _shape_mask

MAX_CAPTION_TOKENS = 48  # 41 for eight objects with BOS/EOS, plus room for the position table


def painted_corner(obj: SceneObject) -> tuple[int, int]:
    """(leftmost column, topmost row) of the object's painted pixels."""
    mask = _shape_mask(obj.shape, obj.extent)
    x0, y0, _, _ = obj.box
    return x0 + int(np.nonzero(mask.any(axis=0))[0][0]), y0 + int(np.nonzero(mask.any(axis=1))[0][0])


def caption_objects(scene: Scene) -> list[SceneObject]:
    """The scene's objects in caption order (left to right, then top to bottom)."""
    return sorted(scene.objects, key=painted_corner)


def describe(objects: list[SceneObject]) -> str:
    """The caption of objects already in caption order ("" for none)."""
    phrases = [f"a {o.size} {o.color} {o.shape}" for o in objects]
    if len(phrases) <= 1:
        return "".join(phrases)
    return " , ".join(phrases[:-1]) + " and " + phrases[-1]


def caption_text(scene: Scene) -> str:
    return describe(caption_objects(scene))


def caption_corpus() -> list[str]:
    """Every phrase shape of the grammar (the words a caption tokenizer must know as whole tokens)."""
    phrases = [f"a {z} {c} {s}" for z, c, s in itertools.product(SIZES, COLORS, SHAPES)]
    return phrases + [f"{a} , {b} and {c}" for a, b, c in zip(phrases, phrases[1:], phrases[2:], strict=False)]


def region_order(boxes: np.ndarray) -> np.ndarray:
    """Indices sorting detected boxes [N,4] (x0, y0, x1, y1) into caption order: by x0, then y0."""
    boxes = np.asarray(boxes).reshape(-1, 4)
    return np.lexsort((boxes[:, 1], boxes[:, 0]))
