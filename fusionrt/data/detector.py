"""Region detector: finds objects from the pixels alone (no access to the renderer's truth).

Non-background pixels are segmented against the background colour estimated from the image
border, grouped into 8-connected components, and each component becomes one region: its box,
a fixed-size crop centred on it with every pixel outside the component set to background, and
its geometry (centre, width, height, area) normalised to O(1) values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

CROP_SIZE = 32
GEOMETRY_DIM = 5
FOREGROUND_THRESHOLD = 40
MIN_AREA = 12
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Regions:
    """Detected regions, sorted left to right: boxes int32 [N,4] (x0,y0,x1,y1 exclusive),
    crops uint8 [N,3,32,32], geometry float32 [N,5], areas int64 [N]."""

    boxes: np.ndarray
    crops: np.ndarray
    geometry: np.ndarray
    areas: np.ndarray

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def crops_float(self) -> np.ndarray:
        """Crops as float32 in [0, 1], the region encoder's input."""
        return self.crops.astype(np.float32) / 255.0


def estimate_background(image: np.ndarray) -> np.ndarray:
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]], axis=0)
    return np.median(border, axis=0).astype(np.int16)


def _crop_component(image: np.ndarray, window: tuple[slice, slice], component: np.ndarray,
                    background: np.ndarray) -> np.ndarray:
    """A CROP_SIZE square centred on the component (``component``: its mask within ``window``, the bounding
    box ``ndimage.find_objects`` gives), other pixels painted background."""
    sy, sx = window
    patch = np.where(component[:, :, None], image[sy, sx], background.astype(np.uint8))
    height, width = patch.shape[:2]
    limit = CROP_SIZE - 2
    if max(height, width) > limit:  # larger than any object of the world: shrink to fit
        scale = limit / max(height, width)
        rows = (np.arange(max(1, round(height * scale))) / scale).astype(int)
        cols = (np.arange(max(1, round(width * scale))) / scale).astype(int)
        patch = patch[rows][:, cols]
        height, width = patch.shape[:2]
    crop = np.empty((CROP_SIZE, CROP_SIZE, 3), dtype=np.uint8)
    crop[:] = background.astype(np.uint8)
    top, left = (CROP_SIZE - height) // 2, (CROP_SIZE - width) // 2
    crop[top:top + height, left:left + width] = patch
    return crop.transpose(2, 0, 1)


def detect_regions(image: np.ndarray, max_regions: int | None = None) -> Regions:
    """Detect objects in an HxWx3 uint8 image.

    When more than ``max_regions`` components are found, the largest ones are kept.
    """
    height, width = image.shape[:2]
    background = estimate_background(image)
    difference = np.abs(image.astype(np.int16) - background[None, None, :]).max(axis=2)
    labels, count = ndimage.label(difference > FOREGROUND_THRESHOLD, structure=_EIGHT_CONNECTED)
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    keep = [i + 1 for i in np.argsort(-areas, kind="stable") if areas[i] >= MIN_AREA]
    if max_regions is not None:
        keep = keep[:max_regions]
    slices = ndimage.find_objects(labels)
    boxes, crops, geometry, kept_areas = [], [], [], []
    for label in keep:
        sy, sx = slices[label - 1]
        component = labels[sy, sx] == label
        x0, y0, x1, y1 = sx.start, sy.start, sx.stop, sy.stop
        area = int(areas[label - 1])
        boxes.append((x0, y0, x1, y1))
        crops.append(_crop_component(image, (sy, sx), component, background))
        geometry.append((
            (x0 + x1) / 2 / width, (y0 + y1) / 2 / height,
            (x1 - x0) / CROP_SIZE, (y1 - y0) / CROP_SIZE, area / CROP_SIZE**2,
        ))
        kept_areas.append(area)
    order = np.argsort([b[0] for b in boxes], kind="stable")
    return Regions(
        boxes=np.asarray(boxes, dtype=np.int32).reshape(-1, 4)[order],
        crops=np.asarray(crops, dtype=np.uint8).reshape(-1, 3, CROP_SIZE, CROP_SIZE)[order],
        geometry=np.asarray(geometry, dtype=np.float32).reshape(-1, GEOMETRY_DIM)[order],
        areas=np.asarray(kept_areas, dtype=np.int64)[order],
    )
