"""Regions of many images at once: what the region encoder takes for a batch of images."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fusionrt.data.captions import region_order
from fusionrt.data.detector import detect_regions
from fusionrt.data.images import load_image
from fusionrt.errors import NoObjectsError


def detect_many(images: Sequence[str | Path | np.ndarray], max_regions: int,
                left_to_right: bool = False) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Crops float32 [R,3,32,32] in [0,1] and geometry [R,5] of every image's regions, concatenated image by
    image, and the region count of each image. ``left_to_right``: each image's regions in caption order. An
    image without an object raises :class:`NoObjectsError` naming it."""
    crops, geometry, counts = [], [], []
    for index, image in enumerate(images):
        regions = detect_regions(load_image(image), max_regions=max_regions)
        if len(regions) == 0:
            name = str(image) if isinstance(image, str | Path) else f"image array #{index}"
            raise NoObjectsError(name, "at least one object on the background", "no object detected")
        order = region_order(regions.boxes) if left_to_right else np.arange(len(regions))
        crops.append(regions.crops_float()[order])
        geometry.append(regions.geometry[order])
        counts.append(len(regions))
    return np.concatenate(crops), np.concatenate(geometry), counts
