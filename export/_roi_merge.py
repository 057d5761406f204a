"""A cheaper ONNX form of the FPN level merge of torchvision's ``MultiScaleRoIAlign``.

When traced, torchvision's ``_multiscale_roi_align`` pools each FPN level's boxes separately and
merges the per-level results with ``_onnx_merge_levels``: a zero tensor of ``N x C x 7 x 7``
and, per level, an index expanded to that full shape and a ``ScatterElements`` that rewrites the
whole tensor. With four levels that is four full copies plus four full int64 index tensors;
onnxruntime's profile of the quickstart model at 128 px put it at ~5 ms, the graph's largest
single cost.

:func:`gather_merge_levels` computes the same tensor with one ``Concat`` of the per-level results
(in level order, which is the order of ``where(levels == level)``) and one ``Gather`` with the
inverse permutation (a 1-D scatter of ``N`` integers). Only data moves: every value is bit for
bit the one the scatter form writes.

:func:`cheap_level_merge` swaps it in for the duration of an export and restores torchvision's
function afterwards, whatever happens; nothing outlives the ``with`` block.

Example:
    >>> with cheap_level_merge():                              # doctest: +SKIP
    ...     torch.onnx.export(adapter, (image,), buffer, dynamo=False)
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads lazily: importing export must stay cheap (``detstack --help``)
    from torch import Tensor

__all__ = ["cheap_level_merge", "gather_merge_levels"]

# Two exports patching the same module attribute at once would restore each other's value.
_PATCH_LOCK = threading.Lock()


def gather_merge_levels(levels: Tensor, unmerged_results: list[Tensor]) -> Tensor:
    """Row ``i`` of the result is box ``i``'s pooled features from its own level ``levels[i]``.

    Args:
        levels: the FPN level of every box (``N``, int64), as torchvision's ``LevelMapper`` says.
        unmerged_results: per level ``l``, the pooled features of the boxes
            ``where(levels == l)`` in that order (``N_l x C x H x W``).
    """
    import torch

    order = torch.cat([torch.where(levels == level)[0] for level in range(len(unmerged_results))])
    # inverse[order[k]] = k: where box i's row sits in the concatenation.
    positions = torch.arange(order.size(0), dtype=order.dtype, device=order.device)
    inverse = torch.zeros_like(order).scatter(0, order, positions)
    return torch.cat(unmerged_results).index_select(0, inverse)


@contextlib.contextmanager
def cheap_level_merge() -> Iterator[None]:
    """Trace ``MultiScaleRoIAlign`` with :func:`gather_merge_levels` inside the block only."""
    from torchvision.ops import poolers

    with _PATCH_LOCK:
        original = poolers._onnx_merge_levels
        poolers._onnx_merge_levels = gather_merge_levels
        try:
            yield
        finally:
            poolers._onnx_merge_levels = original
