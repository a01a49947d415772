"""Image input: a path or an HxWx3 uint8 array, checked against the scene world's format."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fusionrt.data.world import IMAGE_SIZE
from fusionrt.errors import ImageError

EXPECTED = f"a {IMAGE_SIZE}x{IMAGE_SIZE} RGB image"


def load_image(image: str | Path | np.ndarray) -> np.ndarray:
    """Return the image as a ``IMAGE_SIZE x IMAGE_SIZE x 3`` uint8 array.

    Files in any mode Pillow reads (RGBA, palette, grayscale, ...) are converted to RGB; alpha
    is dropped. The size is never changed: object sizes are part of the questions, so an image
    of another size is refused rather than resized.
    """
    if isinstance(image, (str, Path)):
        from PIL import Image, UnidentifiedImageError

        path = Path(image)
        try:
            with Image.open(path) as handle:
                array = np.asarray(handle.convert("RGB"))
        except FileNotFoundError as exc:
            raise ImageError("image", f"{EXPECTED} file", f"no file at {path}") from exc
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise ImageError("image", f"{EXPECTED} file Pillow can read", f"{path} ({exc})") from exc
        name = str(path)
    elif isinstance(image, np.ndarray):
        array, name = image, "image array"
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
            raise ImageError(name, "an HxWx3 uint8 array", f"dtype {array.dtype}, shape {array.shape}")
    else:
        raise ImageError("image", "a path or an HxWx3 uint8 numpy array", type(image).__name__)
    if array.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ImageError(name, f"{EXPECTED} (images are not resized: sizes are part of the answers)",
                         f"{array.shape[1]}x{array.shape[0]}")
    return np.ascontiguousarray(array)
