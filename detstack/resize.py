"""Working sizes and exact bilinear resizing, as torchvision's detector transform does them.

The served model resizes large photos itself, before the graph, so that the graph no longer
converts every pixel of a 12-megapixel photo to float only to keep a 128-pixel image (issue 9:
two thirds of the request went there). That is safe only if the result is what eager PyTorch
computes, so this module reproduces ``GeneralizedRCNNTransform``'s working size and
``F.interpolate(mode="bilinear", align_corners=False)``'s float32 weights, and hands the graph
2×2 blocks whose mean is the exact value (uint8 alone would round it). Pure numpy: the image
policy (:mod:`detstack.images`) decides what gets here.

Example:
    >>> working_size(4000, 3000, 128, 213)
    (170, 128)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "MIN_SPARED_PIXELS",
    "LinearTaps",
    "as_blocks",
    "interpolate_grid",
    "linear_taps",
    "local_taps",
    "resize_bilinear",
    "resize_for_graph",
    "server_working_size",
    "working_scale",
    "working_size",
]


def working_scale(width: int, height: int, min_size: int, max_size: int) -> float:
    """The factor torchvision's ``GeneralizedRCNNTransform`` resizes a ``width×height`` image by."""
    return min(min_size / min(width, height), max_size / max(width, height))


def working_size(width: int, height: int, min_size: int, max_size: int) -> tuple[int, int]:
    """``(width, height)`` that torchvision's eager ``GeneralizedRCNNTransform`` resizes to.

    ``F.interpolate(scale_factor=s, recompute_scale_factor=True)`` floors ``side * s`` in
    Python floats, so this is exactly the size eager PyTorch works at.
    """
    scale = working_scale(width, height, min_size, max_size)
    return math.floor(width * scale), math.floor(height * scale)


def _traced_size(width: int, height: int, min_size: int, max_size: int) -> tuple[int, int]:
    """The size the exported graph resizes a ``width×height`` image to.

    The traced transform computes its scale in float32 (``min_size * (1 / shorter side)``,
    likewise for the longer one, the smaller of the two) and floors ``side * scale``, unlike
    eager PyTorch (Python floats, :func:`working_size`).
    """
    f32 = np.float32
    shorter, longer = f32(min(width, height)), f32(max(width, height))
    scale = min((f32(1) / shorter) * f32(min_size), (f32(1) / longer) * f32(max_size))
    return math.floor(f32(width) * scale), math.floor(f32(height) * scale)


#: The server resizes an image itself only when that spares the graph at least this many
#: pixels: gathering costs a few milliseconds whatever the size, the graph ~10 ns per pixel
#: (measured on 2 cores: even near 300 thousand spared, e.g. 741x500 for a 128-pixel detector,
#: neither way is faster; a 4000x3000 photo spares 12 million).
MIN_SPARED_PIXELS = 500_000


def server_working_size(
    width: int, height: int, min_size: int, max_size: int
) -> tuple[int, int] | None:
    """The size the server resizes a ``width×height`` image to itself, or None (the graph does).

    Only a large shrink qualifies: the :func:`resize_for_graph` blocks must be smaller than the
    image on both axes and spare the graph :data:`MIN_SPARED_PIXELS` (below that, the graph
    normalises the extra pixels faster than this gathers them), and only a size whose blocks
    the exported graph halves back to exactly that size (:func:`_traced_size`).
    """
    if min_size <= 0 or max_size <= 0:
        return None
    size = working_size(width, height, min_size, max_size)
    if min(size) < 1 or 2 * size[0] >= width or 2 * size[1] >= height:
        return None
    if width * height - 4 * size[0] * size[1] < MIN_SPARED_PIXELS:
        return None
    return size if _traced_size(2 * size[0], 2 * size[1], min_size, max_size) == size else None


@dataclass(frozen=True)
class LinearTaps:
    """What bilinear interpolation reads along one axis: two source indices and a weight each.

    Attributes:
        first, second: int64 source indices per output index (``second`` is ``first + 1``
            except at the last source index).
        weight: float32 weight of ``second`` (``first`` gets ``1 - weight``).
    """

    first: np.ndarray
    second: np.ndarray
    weight: np.ndarray


def linear_taps(in_size: int, out_size: int) -> LinearTaps:
    """Taps of ``F.interpolate(mode="bilinear", align_corners=False)`` given an output size.

    The same float32 arithmetic as PyTorch's CPU kernel (``upsample_bilinear2d``): scale
    ``in / out``, source ``scale * (dst + 0.5) - 0.5`` clamped at 0, ``floor`` and fraction.
    No antialiasing: each output index reads exactly two source indices, which is why a server
    can resize a 12-megapixel photo by touching only the few hundred rows and columns it needs.
    """
    f32 = np.float32
    scale = f32(in_size) / f32(out_size)
    source = scale * (np.arange(out_size, dtype=f32) + f32(0.5)) - f32(0.5)
    source = np.maximum(source, f32(0))
    first = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
    weight = np.clip(source - first.astype(f32), f32(0), f32(1)).astype(f32)
    second = first + (first < in_size - 1)
    return LinearTaps(first, second, weight)


def local_taps(taps: LinearTaps) -> tuple[np.ndarray, LinearTaps]:
    """The sorted source indices ``taps`` reads, and the taps re-indexed into that list."""
    needed = np.unique(np.concatenate([taps.first, taps.second]))
    return needed, LinearTaps(
        np.searchsorted(needed, taps.first), np.searchsorted(needed, taps.second), taps.weight
    )


def interpolate_grid(grid: np.ndarray, rows: LinearTaps, cols: LinearTaps) -> np.ndarray:
    """Bilinear interpolation of an HWC ``grid`` at local ``rows``/``cols`` taps (float32)."""
    values = grid.astype(np.float32)
    x_weight = cols.weight[None, :, None]
    y_weight = rows.weight[:, None, None]
    top, bottom = values[rows.first], values[rows.second]
    top = top[:, cols.first] * (1 - x_weight) + top[:, cols.second] * x_weight
    bottom = bottom[:, cols.first] * (1 - x_weight) + bottom[:, cols.second] * x_weight
    return top * (1 - y_weight) + bottom * y_weight


def as_blocks(values: np.ndarray) -> np.ndarray:
    """Each float value 0..255 of an HWC array as a 2×2 uint8 block whose mean is the value
    rounded to a quarter: with ``n`` quarters, the block's pixels are ``(n + k) // 4`` for
    ``k = 0..3``, which sum to ``n``."""
    quarters = np.rint(np.clip(values, 0, 255) * 4).astype(np.uint16)
    height, width, channels = quarters.shape
    blocks = np.empty((2 * height, 2 * width, channels), np.uint8)
    for k, (row, col) in enumerate(((0, 0), (1, 1), (0, 1), (1, 0))):
        blocks[row::2, col::2] = (quarters + k) >> 2
    return blocks


def _gather(pixels: np.ndarray, size: tuple[int, int], channels_first: bool) -> np.ndarray:
    height, width = pixels.shape[1:] if channels_first else pixels.shape[:2]
    row_index, rows = local_taps(linear_taps(height, size[1]))
    col_index, cols = local_taps(linear_taps(width, size[0]))
    if channels_first:
        grid = pixels[:, row_index][:, :, col_index].transpose(1, 2, 0)
    else:
        grid = pixels[row_index][:, col_index]
    return interpolate_grid(grid, rows, cols)


def resize_bilinear(
    pixels: np.ndarray, size: tuple[int, int], *, channels_first: bool = False
) -> np.ndarray:
    """Resize a uint8 image to ``size`` (``(width, height)``) as torchvision's transform does.

    Bilinear, ``align_corners=False``, no antialias (:func:`linear_taps`), computed in float32
    on the uint8 values and rounded to uint8: within half a grey level of ``F.interpolate`` on
    the same image. Only the source rows and columns the output reads are touched.

    Args:
        pixels: ``(H, W, C)`` uint8, or ``(C, H, W)`` with ``channels_first``.
        size: the output ``(width, height)``.

    Returns:
        A new C-contiguous uint8 array in the input's layout.
    """
    resized = np.clip(np.rint(_gather(pixels, size, channels_first)), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(resized.transpose(2, 0, 1)) if channels_first else resized


def resize_for_graph(
    pixels: np.ndarray, size: tuple[int, int], *, channels_first: bool = False
) -> np.ndarray:
    """What to feed a detector graph so that it works on ``pixels`` resized to ``size``.

    The graph takes uint8 and resizes bilinearly itself, so a plain uint8 resize would round
    each interpolated value by up to half a grey level. Instead every output pixel becomes a
    2×2 block whose mean is the interpolated value to within 1/8 of a grey level: the graph
    halves the ``2w×2h`` image (bilinear at scale 1/2 averages each block with weights 1/4;
    normalisation is affine, so it commutes with the averaging) and works on ``size``, as eager
    PyTorch does on the full image, to within that 1/8 level.

    Returns:
        uint8, ``(2h, 2w, C)`` or ``(C, 2h, 2w)``, C-contiguous.
    """
    blocks = as_blocks(_gather(pixels, size, channels_first))
    return np.ascontiguousarray(blocks.transpose(2, 0, 1)) if channels_first else blocks
