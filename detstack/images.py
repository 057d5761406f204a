"""The one image loader of detstack, used identically by training, export checks and serving.

Every stage turns image bytes into pixels through :func:`decode_image`, so a model never sees
an image one way in training and another way in production.

Policy:

* **Formats by content, from an allow-list** (:data:`ALLOWED_FORMATS`). The file name and any
  declared MIME type are ignored; bytes that are not one of these formats are refused.
* **EXIF orientation is applied.** Pixels come out as a person sees the photo (the way
  annotation tools such as CVAT and Label Studio display it), so COCO ``width``/``height`` and
  boxes refer to the *oriented* image. A malformed EXIF block is ignored (orientation 1).
* **Any colour mode becomes RGB uint8.** Palette and grey images are expanded; an alpha channel
  is dropped (the colour under it is kept, as ``PIL.Image.convert("RGB")`` does); CMYK and
  YCbCr are converted; 16-bit and 32-bit integer images keep their top 8 bits (``value >> 8``);
  float images are clipped to 0..255.
* **Decompression bombs are errors**, not warnings: more than ``max_pixels`` pixels (default
  :data:`DEFAULT_MAX_PIXELS`) is refused before the pixels are decoded.
* **Truncated or corrupt files are errors.** Pillow's ``LOAD_TRUNCATED_IMAGES`` is never set.

Example:
    >>> from pathlib import Path
    >>> pixels = decode_image(Path("photo.jpg").read_bytes())   # doctest: +SKIP
    >>> pixels.shape, pixels.dtype                               # doctest: +SKIP
    ((480, 640, 3), dtype('uint8'))
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from detstack.errors import ImageDecodeError

__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "decode_image",
    "probe_image",
    "read_image",
    "to_chw",
]

logger = logging.getLogger(__name__)

#: Pillow format names accepted by content sniffing (JPEG includes cameras' multi-picture MPO).
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP")

#: 64 megapixels: larger than any camera photo in common use, far below what exhausts memory.
DEFAULT_MAX_PIXELS = 64_000_000

_ORIENTATION_TAG = 0x0112
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_HIGH_DEPTH_INTEGER_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})


def _open(data: bytes, source: str, max_pixels: int) -> Image.Image:
    if not data:
        raise ImageDecodeError(f"{source}: empty image data (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        raise ImageDecodeError(
            f"{source}: not an image in an accepted format "
            f"(first bytes {data[:8]!r}; accepted: {', '.join(ALLOWED_FORMATS)})"
        ) from None
    except Image.DecompressionBombError as error:
        raise ImageDecodeError(f"{source}: decompression bomb refused ({error})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageDecodeError(f"{source}: corrupt image header ({error})") from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"{source}: image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"{source}: {width}x{height} = {width * height} pixels exceeds the limit of "
            f"{max_pixels} pixels (decompression bomb protection)"
        )
    return image


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
        return int(value) if int(value) in range(1, 9) else 1
    except (ValueError, TypeError, KeyError, OSError, SyntaxError, AttributeError):
        return 1


def probe_image(
    data: bytes, *, source: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[int, int]:
    """Return the *oriented* ``(width, height)`` of an image without decoding its pixels.

    Raises:
        ImageDecodeError: the bytes are empty, not an allowed format, or a decompression bomb.
    """
    image = _open(data, source, max_pixels)
    width, height = image.size
    if _orientation(image) in _SWAPPING_ORIENTATIONS:
        return height, width
    return width, height


def _to_rgb(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image, dtype=np.uint8)
    if mode in _HIGH_DEPTH_INTEGER_MODES:
        values = np.asarray(image).astype(np.int64)
        grey = (np.clip(values, 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        grey = np.clip(np.asarray(image, dtype=np.float32), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def decode_image(
    data: bytes, *, source: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decode image file bytes into an RGB ``uint8`` array of shape ``(height, width, 3)``.

    Args:
        data: the bytes of an image file.
        source: what the bytes are (a path, a row index) so error messages can name it.
        max_pixels: refuse images with more pixels than this before decoding them.

    Returns:
        A C-contiguous HWC array, EXIF orientation applied.

    Raises:
        ImageDecodeError: empty, not an allowed format, a decompression bomb, truncated, or
            corrupt.
    """
    image = _open(data, source, max_pixels)
    try:
        image.load()
        orientation = _orientation(image)
        if orientation != 1:
            image = ImageOps.exif_transpose(image)
        pixels = _to_rgb(image)
    except Image.DecompressionBombError as error:
        raise ImageDecodeError(f"{source}: decompression bomb refused ({error})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageDecodeError(f"{source}: truncated or corrupt image data ({error})") from None
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ImageDecodeError(f"{source}: decoded to shape {pixels.shape}, expected (H, W, 3)")
    return np.ascontiguousarray(pixels)


def read_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read and decode a local image file (see :func:`decode_image`)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ImageDecodeError(
            f"{path}: cannot read image file ({error.strerror or error})"
        ) from None
    return decode_image(data, source=str(path), max_pixels=max_pixels)


def to_chw(pixels: np.ndarray) -> np.ndarray:
    """Turn an HWC RGB array into the contract's CHW layout (a contiguous copy)."""
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ImageDecodeError(f"expected an (H, W, 3) array, got shape {pixels.shape}")
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))
