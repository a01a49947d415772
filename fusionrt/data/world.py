"""The scene world: 128x128 RGB images of 1-8 non-overlapping objects, rendered from a seed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IMAGE_SIZE = 128
BACKGROUND = (235, 235, 235)
BACKGROUND_NOISE = 4
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 40),
    "purple": (150, 60, 190),
    "cyan": (40, 190, 200),
}
SHAPES = ("circle", "square", "triangle")
SIZES: dict[str, int] = {"small": 14, "large": 26}
MAX_OBJECTS = 8
# Pixels kept free between objects, so they never touch and the detector can separate them.
GAP = 3

ANSWERS: tuple[str, ...] = (
    *COLORS, *SHAPES, *SIZES, *(str(n) for n in range(MAX_OBJECTS + 1)), "yes", "no",
)


@dataclass(frozen=True)
class SceneObject:
    """One object: attributes and the centre of its box in pixels."""

    shape: str
    color: str
    size: str
    x: int
    y: int

    @property
    def extent(self) -> int:
        return SIZES[self.size]

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1), exclusive upper bounds."""
        half = self.extent // 2
        return self.x - half, self.y - half, self.x - half + self.extent, self.y - half + self.extent


@dataclass(frozen=True)
class Scene:
    seed: int
    objects: tuple[SceneObject, ...]


def _boxes_apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[2] + GAP <= b[0] or b[2] + GAP <= a[0] or a[3] + GAP <= b[1] or b[3] + GAP <= a[1]


def generate_scene(seed: int, num_objects: int | None = None) -> Scene:
    """Draw a scene reproducibly from ``seed`` (1-8 objects unless ``num_objects`` is given)."""
    rng = np.random.default_rng(seed)
    count = int(rng.integers(1, MAX_OBJECTS + 1)) if num_objects is None else num_objects
    if not 0 <= count <= MAX_OBJECTS:
        raise ValueError(f"num_objects: expected 0..{MAX_OBJECTS}, received {count}")
    color_names, size_names = list(COLORS), list(SIZES)
    while True:  # rejection sampling of positions; restart the layout if it gets crowded
        objects: list[SceneObject] = []
        for _ in range(200):
            if len(objects) == count:
                break
            size = size_names[rng.integers(len(size_names))]
            half = SIZES[size] // 2
            x = int(rng.integers(half + 2, IMAGE_SIZE - half - 2))
            y = int(rng.integers(half + 2, IMAGE_SIZE - half - 2))
            candidate = SceneObject(
                shape=SHAPES[rng.integers(len(SHAPES))], color=color_names[rng.integers(len(color_names))],
                size=size, x=x, y=y,
            )
            if all(_boxes_apart(candidate.box, o.box) for o in objects):
                objects.append(candidate)
        if len(objects) == count:
            return Scene(seed=seed, objects=tuple(objects))


def _shape_mask(shape: str, extent: int) -> np.ndarray:
    yy, xx = np.mgrid[0:extent, 0:extent] + 0.5
    if shape == "square":
        return np.ones((extent, extent), dtype=bool)
    if shape == "circle":
        r = extent / 2
        return (xx - r) ** 2 + (yy - r) ** 2 <= r * r
    if shape == "triangle":  # apex up, base along the bottom row
        half_width = (yy / extent) * (extent / 2)
        return np.abs(xx - extent / 2) <= half_width
    raise ValueError(f"shape: expected one of {SHAPES}, received {shape!r}")


def render(scene: Scene) -> np.ndarray:
    """Render a scene as an HxWx3 uint8 array (noise drawn from the scene's seed)."""
    rng = np.random.default_rng(scene.seed + 7919)
    noise = rng.integers(-BACKGROUND_NOISE, BACKGROUND_NOISE + 1, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
    image = (np.array(BACKGROUND)[None, None, :] + noise).astype(np.uint8)
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.box
        mask = _shape_mask(obj.shape, obj.extent)
        image[y0:y1, x0:x1][mask] = COLORS[obj.color]
    return image


# Disjoint seed ranges: training, held-out evaluation and calibration never share a scene.
SPLIT_SIZE = 1_000_000
SPLIT_OFFSETS = {"train": 0, "heldout": SPLIT_SIZE, "calibration": 2 * SPLIT_SIZE}


def split_seeds(split: str, count: int, start: int = 0) -> range:
    """Seeds ``start .. start+count`` of a split, checked to stay inside it."""
    if split not in SPLIT_OFFSETS:
        raise ValueError(f"split: expected one of {sorted(SPLIT_OFFSETS)}, received {split!r}")
    if start < 0 or count < 0 or start + count > SPLIT_SIZE:
        raise ValueError(f"seeds: expected start+count <= {SPLIT_SIZE}, received {start}+{count}")
    offset = SPLIT_OFFSETS[split]
    return range(offset + start, offset + start + count)
