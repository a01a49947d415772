"""Image input: a path or an HxWx3 uint8 array, checked against the scene world's format."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np

from fusionrt.data.world import IMAGE_SIZE
from fusionrt.errors import ImageError

EXPECTED = f"a {IMAGE_SIZE}x{IMAGE_SIZE} RGB image"
# Pillow modes whose samples are 16-bit integers: scaled to 8 bits (Pillow's own RGB conversion clips them).
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def decode_image(source: Path | bytes, name: str) -> np.ndarray:
    """Decode a file (a path) or encoded bytes into pixels, once the header says the image is IMAGE_SIZE x
    IMAGE_SIZE: a compressed file of a few KB can declare a gigapixel image (a decompression bomb), so the
    size is checked before any pixel is decoded. 16-bit grayscale is scaled to 8 bits (Pillow's own RGB
    conversion clips it to white). Anything else Pillow reads is converted to RGB."""
    from PIL import Image, UnidentifiedImageError

    what = f"{EXPECTED} file" if isinstance(source, Path) else f"{EXPECTED} encoded as PNG"
    try:
        with warnings.catch_warnings():
            # Pillow warns above 89 Mpixel; the size check below refuses far smaller images anyway.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            handle = Image.open(source if isinstance(source, Path) else io.BytesIO(source))  # header only
        with handle:
            if handle.size != (IMAGE_SIZE, IMAGE_SIZE):
                raise ImageError(name, f"{EXPECTED} (images are not resized: sizes are part of the answers; "
                                       "the size is read from the header, nothing was decoded)",
                                 f"{handle.size[0]}x{handle.size[1]}")
            if handle.mode in SIXTEEN_BIT_MODES:
                wide = np.asarray(handle, dtype=np.uint32)
                gray = ((wide * 255 + 32767) // 65535).astype(np.uint8)  # 0..65535 -> 0..255, rounded
                return np.repeat(gray[:, :, None], 3, axis=2)
            return np.asarray(handle.convert("RGB"))
    except ImageError:
        raise
    except FileNotFoundError as exc:
        raise ImageError(name, what, f"no file at {source}") from exc
    except Image.DecompressionBombError as exc:
        raise ImageError(name, what, f"a decompression bomb ({exc})") from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        got = str(source) if isinstance(source, Path) else f"{len(source)} bytes starting {bytes(source[:8])!r}"
        raise ImageError(name, f"{what} Pillow can read", f"{got} ({exc})") from exc


def load_image(image: str | Path | np.ndarray) -> np.ndarray:
    """Return the image as a ``IMAGE_SIZE x IMAGE_SIZE x 3`` uint8 array.

    Files in any mode Pillow reads (RGBA, palette, grayscale, ...) are converted to RGB; alpha
    is dropped. The size is never changed: object sizes are part of the questions, so an image
    of another size is refused rather than resized.
    """
    if isinstance(image, (str, Path)):
        array, name = decode_image(Path(image), str(image)), str(image)
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
