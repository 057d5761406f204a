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
* **Truncated or corrupt files are errors.** Pillow's ``LOAD_TRUNCATED_IMAGES`` is never set,
  and whatever Pillow raises on hostile bytes (TypeError and MemoryError included) becomes
  one :class:`~detstack.errors.ImageDecodeError`.

Example:
    >>> from pathlib import Path
    >>> pixels = decode_image(Path("photo.jpg").read_bytes())   # doctest: +SKIP
    >>> pixels.shape, pixels.dtype                               # doctest: +SKIP
    ((480, 640, 3), dtype('uint8'))
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from detstack.errors import ImageDecodeError
from detstack.resize import (
    MIN_SPARED_PIXELS,
    as_blocks,
    interpolate_grid,
    linear_taps,
    local_taps,
    resize_bilinear,
    resize_for_graph,
    server_working_size,
    working_scale,
    working_size,
)

__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "MIN_SPARED_PIXELS",
    "WorkingImage",
    "decode_for_model",
    "decode_image",
    "linear_taps",
    "probe_image",
    "read_image",
    "resize_bilinear",
    "resize_for_graph",
    "server_working_size",
    "to_chw",
    "working_scale",
    "working_size",
]

logger = logging.getLogger(__name__)

#: Pillow format names accepted by content sniffing (JPEG includes cameras' multi-picture MPO).
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP")

#: 64 megapixels: larger than any camera photo in common use, far below what exhausts memory.
DEFAULT_MAX_PIXELS = 64_000_000

_ORIENTATION_TAG = 0x0112
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_HIGH_DEPTH_INTEGER_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})


def _decode_error(source: str, what: str, error: Exception) -> ImageDecodeError:
    """The one typed error for anything Pillow raises on untrusted bytes.

    Pillow's decoders document OSError, ValueError, SyntaxError and EOFError, but crafted files
    also reach TypeError, OverflowError, IndexError, KeyError, struct.error, ZeroDivisionError
    (a TIFF whose StripOffsets tag is a float, for example). Catching ``Exception`` keeps every
    one of them, and MemoryError, inside the per-image error; KeyboardInterrupt and SystemExit
    are not ``Exception`` and still stop the program.
    """
    if isinstance(error, Image.DecompressionBombError):
        return ImageDecodeError(f"{source}: decompression bomb refused ({error})")
    if isinstance(error, MemoryError):
        return ImageDecodeError(f"{source}: not enough memory to decode the image ({what})")
    detail = str(error)[:200] or "no detail"
    return ImageDecodeError(f"{source}: {what} ({type(error).__name__}: {detail})")


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
    except Exception as error:  # Pillow's plugins raise many types on hostile bytes
        raise _decode_error(source, "corrupt image header", error) from None
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
    except Exception:  # a malformed EXIF block means "no orientation", whatever it raises
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


#: Bytes read per strip when converting high-depth grey (a few MB of temporaries at a time),
#: so a 16-bit image costs Pillow's own buffer plus the RGB result, never a copy of itself
#: (``np.asarray`` of a whole image goes through ``tobytes``) nor an int64 one.
_BLOCK_BYTES = 1 << 22


def _top_eight_bits(block: np.ndarray) -> np.ndarray:
    if block.dtype.itemsize > 2 or block.dtype.kind == "i":  # mode "I" is int32: clip first
        block = np.clip(block, 0, 65535)
    return block >> 8


def _clipped_float(block: np.ndarray) -> np.ndarray:
    return np.nan_to_num(np.clip(block, 0, 255), nan=0.0)


def _grey_to_rgb(
    image: Image.Image, to_eight_bits: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """Convert a one-channel image strip by strip into a new ``(H, W, 3)`` uint8 array."""
    width, height = image.size
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    step = max(1, _BLOCK_BYTES // (width * 8))  # 4-byte pixels read, then a same-size result
    for top in range(0, height, step):
        bottom = min(height, top + step)
        rgb[top:bottom, :, 0] = to_eight_bits(np.asarray(image.crop((0, top, width, bottom))))
    rgb[:, :, 1] = rgb[:, :, 0]
    rgb[:, :, 2] = rgb[:, :, 0]
    return rgb


def _to_rgb(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image, dtype=np.uint8)
    if mode in _HIGH_DEPTH_INTEGER_MODES:
        return _grey_to_rgb(image, _top_eight_bits)
    if mode == "F":
        return _grey_to_rgb(image, _clipped_float)
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
    return _pixels_of(_open(data, source, max_pixels), source)


def _pixels_of(image: Image.Image, source: str) -> np.ndarray:
    """Load an opened image and apply the policy: EXIF orientation, RGB uint8, HWC."""
    try:
        image.load()
        orientation = _orientation(image)
        if orientation != 1:
            image = ImageOps.exif_transpose(image)
        pixels = _to_rgb(image)
    except Exception as error:  # see _decode_error: every failure is one typed error
        raise _decode_error(source, "truncated or corrupt image data", error) from None
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ImageDecodeError(f"{source}: decoded to shape {pixels.shape}, expected (H, W, 3)")
    return np.ascontiguousarray(pixels)


@dataclass(frozen=True)
class WorkingImage:
    """An image decoded for a detector that resizes to a working size anyway.

    Attributes:
        pixels: HWC RGB uint8, oriented; possibly smaller than the original (resized to the
            detector's working size, or a DCT-scaled JPEG).
        original_size: ``(width, height)`` of the oriented original: boxes found on
            ``pixels`` are scaled by ``original_size / pixels`` size to be in its pixels.
    """

    pixels: np.ndarray
    original_size: tuple[int, int]

    @property
    def scale(self) -> tuple[float, float]:
        """``(sx, sy)``: multiply x and y coordinates on ``pixels`` by these."""
        height, width = self.pixels.shape[:2]
        return self.original_size[0] / width, self.original_size[1] / height


#: Rows closer together than this are read from the decoded image in one crop.
_BAND_GAP = 8

#: EXIF orientation -> (oriented rows are stored columns, stored rows reversed, stored columns
#: reversed): where oriented pixel (r, c) lies in the stored image, for every orientation
#: ``ImageOps.exif_transpose`` applies (2 FLIP_LEFT_RIGHT ... 8 ROTATE_90).
_ORIENTED_INDEX = {
    1: (False, False, False),
    2: (False, False, True),
    3: (False, True, True),
    4: (False, True, False),
    5: (True, False, False),
    6: (True, True, False),
    7: (True, True, True),
    8: (True, False, True),
}


def _stored_rows(image: Image.Image, wanted: np.ndarray) -> np.ndarray:
    """Rows ``wanted`` of a loaded image as RGB uint8 ``(len(wanted), W, 3)``, colour policy
    applied (every mode conversion of :func:`_to_rgb` is per pixel, so converting a crop is
    converting the image)."""
    width = image.size[0]
    unique = np.unique(wanted)
    breaks = np.flatnonzero(np.diff(unique) > _BAND_GAP) + 1
    parts = []
    for band in np.split(unique, breaks):
        top = int(band[0])
        strip = _to_rgb(image.crop((0, top, width, int(band[-1]) + 1)))
        parts.append(strip[band - top])
    return np.concatenate(parts)[np.searchsorted(unique, wanted)]


def _oriented_grid(
    image: Image.Image, orientation: int, rows: np.ndarray, cols: np.ndarray
) -> np.ndarray:
    """Pixels ``rows × cols`` of the *oriented* image, read from the stored one (no transpose
    of the whole photo)."""
    swap, flip_rows, flip_cols = _ORIENTED_INDEX[orientation]
    stored_width, stored_height = image.size
    stored_rows, stored_cols = (cols, rows) if swap else (rows, cols)
    if flip_rows:
        stored_rows = stored_height - 1 - stored_rows
    if flip_cols:
        stored_cols = stored_width - 1 - stored_cols
    grid = _stored_rows(image, stored_rows)[:, stored_cols]
    return grid.transpose(1, 0, 2) if swap else grid


def _resized_pixels(
    image: Image.Image, orientation: int, original: tuple[int, int], size: tuple[int, int]
) -> np.ndarray:
    """The oriented image resized to ``size`` like :func:`resize_for_graph`, reading only the
    rows and columns the interpolation needs."""
    row_index, rows = local_taps(linear_taps(original[1], size[1]))
    col_index, cols = local_taps(linear_taps(original[0], size[0]))
    grid = _oriented_grid(image, orientation, row_index, col_index)
    if grid.ndim != 3 or grid.shape[2] != 3:
        raise ImageDecodeError(f"decoded to shape {grid.shape}, expected (H, W, 3)")
    return as_blocks(interpolate_grid(grid, rows, cols))


def decode_for_model(
    data: bytes,
    *,
    min_size: int,
    max_size: int,
    source: str = "image",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft: bool = False,
    margin: float = 2.0,
    resize: bool = False,
) -> WorkingImage:
    """Decode image bytes for a detector whose own resize is ``min_size``/``max_size``.

    With ``resize``, an image the detector would shrink comes back as :func:`resize_for_graph`
    blocks of the detector's working size (:func:`server_working_size`): resized as
    torchvision's transform resizes, to within 1/8 of a grey level, so the graph's own resize
    only halves it: the graph then normalises ~50 thousand pixels instead of 12 million, and
    only the rows and columns the interpolation reads are converted out of Pillow. The file is
    still decoded fully (same pixels, unlike ``draft``).

    With ``draft``, a JPEG is decoded at the smallest DCT scale (1/2, 1/4 or 1/8) whose result
    is still at least ``margin`` times the size the detector resizes to (Pillow's ``draft``):
    a 4000×3000 photo for an 800-pixel detector decodes at 2000×1500, several times faster, and
    the detector's own resize does the rest (``resize`` then does not apply). It is faster but
    not free: on the quickstart model a reduced scale cost up to 0.9 COCO AP points against a
    full decode (``benchmarks/results/wire/draft_accuracy.json``), so serving leaves it off by
    default. Other formats decode fully. Same policy as :func:`decode_image` (allow-list,
    pixel limit on the *original* size before decoding, orientation, RGB).

    Raises:
        ImageDecodeError: as :func:`decode_image`.
    """
    image = _open(data, source, max_pixels)
    width, height = image.size
    orientation = _orientation(image)
    original = (height, width) if orientation in _SWAPPING_ORIENTATIONS else (width, height)
    if draft and image.format in ("JPEG", "MPO"):
        scale = working_scale(width, height, min_size, max_size) * margin
        if scale < 0.5:
            try:
                image.draft(None, (math.ceil(width * scale), math.ceil(height * scale)))
            except Exception as error:  # a malformed JPEG header: one typed error
                raise _decode_error(source, "corrupt image header", error) from None
            if image.size != (width, height):
                return WorkingImage(_pixels_of(image, source), original)
    size = server_working_size(*original, min_size, max_size) if resize else None
    if size is None:
        return WorkingImage(_pixels_of(image, source), original)
    try:
        image.load()
        pixels = _resized_pixels(image, orientation, original, size)
    except ImageDecodeError as error:
        raise ImageDecodeError(f"{source}: {error}") from None
    except Exception as error:  # see _decode_error: every failure is one typed error
        raise _decode_error(source, "truncated or corrupt image data", error) from None
    return WorkingImage(pixels, original)


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
