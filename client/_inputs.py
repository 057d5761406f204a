"""What :meth:`client.DetectionClient.predict_arrays` accepts as one image, made into a request.

An image is an array (RGB ``uint8``, HWC as ``np.asarray(PIL image)`` gives, or the contract's
CHW), the bytes of an image file, or a path to one. Each bad input is a typed error that names
its position.

Example:
    >>> as_chw(np.zeros((4, 6, 3), np.uint8), "image 0", 10_000).shape
    (3, 4, 6)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from detstack.errors import BadInputError, ImageDecodeError
from detstack.images import decode_image, to_chw

__all__ = ["as_chw", "file_bytes"]


def file_bytes(image: Any, where: str) -> bytes:
    """The bytes of an image given as bytes or as a path.

    Raises:
        ImageDecodeError: the path cannot be read.
        BadInputError: neither bytes nor a path.
    """
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image)
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        try:
            return path.read_bytes()
        except OSError as error:
            raise ImageDecodeError(f"{path}: cannot read ({error.strerror or error})") from None
    raise BadInputError(
        f"{where}: expected an array, image bytes or a path, got {type(image).__name__}"
    )


def as_chw(image: Any, where: str, max_pixels: int) -> np.ndarray:
    """The contract's uint8 CHW pixels of an array, image bytes or a path (decoded here).

    Raises:
        BadInputError: not uint8, not RGB, or not an image at all.
        ImageDecodeError: a file that cannot be read or decoded.
    """
    if isinstance(image, bytes | bytearray | memoryview | str | os.PathLike):
        source = str(image) if isinstance(image, str | os.PathLike) else where
        data = file_bytes(image, where)
        return to_chw(decode_image(data, source=source, max_pixels=max_pixels))
    if not isinstance(image, np.ndarray):
        raise BadInputError(
            f"{where}: expected an array, image bytes or a path, got {type(image).__name__}"
        )
    if image.dtype != np.uint8:
        raise BadInputError(f"{where}: expected a uint8 array, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 3:
        return np.ascontiguousarray(image.transpose(2, 0, 1))
    if image.ndim == 3 and image.shape[0] == 3:
        return np.ascontiguousarray(image)
    raise BadInputError(
        f"{where}: expected an RGB image of shape (H, W, 3) or (3, H, W), got {image.shape}"
    )
