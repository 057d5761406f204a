"""RoIAlign on small feature maps as two matrix products: the same values, a third of the time.

The box head of a Faster R-CNN pools every proposal from its FPN level with RoIAlign: per box,
per channel, 7×7 bins of 2×2 bilinear samples. onnxruntime's CPU kernel (like torchvision's)
computes every sample of every channel one by one; on the quickstart model (100 proposals, 128
channels, a 16×16 map) that is ~4.5 ms, the graph's largest single cost.

The samples of a bin lie on a grid, and bilinear weights factor into a row part and a column
part, so for one box RoIAlign is ``Ay @ F[c] @ Ax.T`` for every channel ``c``: ``Ay`` (7 × H)
holds each output row's weights over the map's rows (its two samples' two neighbours, averaged,
zero for a sample outside the map exactly as RoIAlign treats it), ``Ax`` (7 × W) the same for
columns. :func:`matmul_roi_align` computes that with one matrix product over all boxes and one
batched product, which onnxruntime runs as GEMMs. It does ``7·H·W`` multiply-adds per box and
channel against RoIAlign's fixed ``49·4·4``, so it wins only while the map is small: measured on
2 cores it is 1.5-2.5× faster up to 32×32, and the two meet at about 45×45
(``benchmarks/results/wire/roi_align_matmul.json``).

:func:`small_map_roi_align` swaps it in for ``torchvision.ops.poolers`` for the duration of an
export, for the FPN levels whose map can never be larger than :data:`MAX_MAP_AREA` (known from
the detector's ``max_size``: ``ResNet-50`` at 1333 px keeps onnxruntime's RoiAlign on every
level), and restores torchvision's function afterwards, whatever happens. It follows
torchvision's ``roi_align`` with ``aligned=False`` and a fixed ``sampling_ratio``; any other
call goes to torchvision's own function. The values agree to float32 rounding (the sums run in
another order); the parity gate compares the graph with eager PyTorch as always.

Example:
    >>> with small_map_roi_align(max_side=128):                # doctest: +SKIP
    ...     torch.onnx.export(adapter, (image,), buffer, dynamo=False)
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch loads lazily: importing export must stay cheap (``detstack --help``)
    from torch import Tensor

__all__ = ["MAX_MAP_AREA", "matmul_roi_align", "small_map_roi_align"]

#: Largest feature map (height × width) pooled with :func:`matmul_roi_align`; measured
#: crossover with onnxruntime's RoiAlign on 2 cores: about 45×45.
MAX_MAP_AREA = 32 * 32

#: ``GeneralizedRCNNTransform`` pads a batch up to a multiple of this.
_SIZE_DIVISIBLE = 32

# Two exports patching the same module attribute at once would restore each other's value.
_PATCH_LOCK = threading.Lock()


def _axis_weights(start: Tensor, bin_size: Tensor, size: Tensor, pooled: int, grid: int) -> Tensor:
    """``(N, pooled, size)``: each output index's weights over the map's indices along one axis.

    Exactly RoIAlign's sampling (torchvision's ``roi_align_forward_kernel_impl``, ``aligned``
    false): sample ``g`` of bin ``p`` sits at ``start + p·bin + (g + ½)·bin / grid``; a sample
    below -1 or above ``size`` contributes nothing; otherwise it is clamped at 0 and split
    between its floor and the next index, the last index taking all of a sample beyond it.
    """
    import torch

    bins = torch.arange(pooled, dtype=torch.float32, device=start.device)
    samples = torch.arange(grid, dtype=torch.float32, device=start.device)
    step = bin_size[:, None, None]
    where = start[:, None, None] + bins[None, :, None] * step + (samples + 0.5) * step / grid
    extent = size.to(torch.float32)
    inside = ((where >= -1.0) & (where <= extent)).to(torch.float32)
    where = where.clamp(min=0.0)
    low = where.floor()
    last = extent - 1.0
    beyond = low >= last
    low = torch.where(beyond, last, low)
    where = torch.where(beyond, low, where)
    high = torch.where(beyond, low, low + 1.0)
    fraction = where - low
    index = torch.arange(size, dtype=torch.float32, device=start.device)
    weights = ((1.0 - fraction) * inside)[..., None] * (low[..., None] == index).to(torch.float32)
    weights = weights + (fraction * inside)[..., None] * (high[..., None] == index).to(
        torch.float32
    )
    return weights.sum(2) / grid


def matmul_roi_align(
    features: Tensor,
    rois: Tensor,
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
) -> Tensor:
    """torchvision's ``roi_align`` (``aligned=False``) of one image's map, as two products.

    Args:
        features: ``(1, C, H, W)``: the map of one image (the export traces one image).
        rois: ``(N, 5)``: batch index (0), then x1, y1, x2, y2 in image pixels.
        output_size: ``(pooled height, pooled width)``.
        spatial_scale: map pixels per image pixel.
        sampling_ratio: samples per bin along each axis (> 0).

    Returns:
        ``(N, C, pooled height, pooled width)``.
    """
    import torch

    height, width = features.shape[-2], features.shape[-1]
    pooled_h, pooled_w = output_size
    x1, y1, x2, y2 = (rois[:, k] * spatial_scale for k in range(1, 5))
    rows = _axis_weights(
        y1,
        torch.clamp(y2 - y1, min=1.0) / pooled_h,
        torch.as_tensor(height),
        pooled_h,
        sampling_ratio,
    )  # (N, pooled_h, H)
    cols = _axis_weights(
        x1,
        torch.clamp(x2 - x1, min=1.0) / pooled_w,
        torch.as_tensor(width),
        pooled_w,
        sampling_ratio,
    )  # (N, pooled_w, W)
    channels = features.shape[1]
    by_row = features[0].permute(1, 0, 2).reshape(height, -1)  # (H, C·W)
    pooled_rows = torch.matmul(rows.reshape(-1, height), by_row)  # (N·pooled_h, C·W)
    pooled_rows = pooled_rows.reshape(-1, pooled_h * channels, width)  # (N, pooled_h·C, W)
    pooled = torch.bmm(pooled_rows, cols.transpose(1, 2))  # (N, pooled_h·C, pooled_w)
    return pooled.reshape(-1, pooled_h, channels, pooled_w).permute(0, 2, 1, 3)


def _bounded_roi_align(original: Callable[..., Tensor], max_side: int) -> Callable[..., Tensor]:
    padded = math.ceil(max_side / _SIZE_DIVISIBLE) * _SIZE_DIVISIBLE

    def roi_align(
        input: Tensor,
        boxes: Any,
        output_size: Any,
        spatial_scale: float = 1.0,
        sampling_ratio: int = -1,
        aligned: bool = False,
    ) -> Tensor:
        side = math.ceil(padded * spatial_scale)
        simple = (
            not aligned
            and sampling_ratio > 0
            and not isinstance(boxes, (list, tuple))
            and input.dim() == 4
            and input.shape[0] == 1
            and side * side <= MAX_MAP_AREA
        )
        if not simple:
            return original(input, boxes, output_size, spatial_scale, sampling_ratio, aligned)
        size = (output_size, output_size) if isinstance(output_size, int) else output_size
        return matmul_roi_align(input, boxes, tuple(size), spatial_scale, sampling_ratio)

    return roi_align


@contextlib.contextmanager
def small_map_roi_align(max_side: int) -> Iterator[None]:
    """Inside the block, FPN levels whose map stays within :data:`MAX_MAP_AREA` for images of
    at most ``max_side`` pixels (the detector's ``max_size``) pool with
    :func:`matmul_roi_align`."""
    from torchvision.ops import poolers

    with _PATCH_LOCK:
        original = poolers.roi_align
        poolers.roi_align = _bounded_roi_align(original, max_side)
        try:
            yield
        finally:
            poolers.roi_align = original
