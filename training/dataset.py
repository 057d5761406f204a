"""The torch side of the data: a map-style dataset, its collate function and batch samplers.

* :class:`DetectionDataset` turns a :class:`~training.coco.CocoDataset` and a list of image ids
  into ``(image float32 CHW in [0, 1], {"boxes", "labels", "image_id"} tensors)`` samples.
* :func:`collate_fn` keeps images of different sizes as a list (the detector batches them).
* :class:`GroupedBatchSampler` builds batches of images with similar aspect ratios, so the
  detector pads less. It wraps any sampler (``SeededRandomSampler``, ``DistributedSampler``,
  ``SequentialSampler``) and adds no randomness of its own: the order, and so the batches, are
  fixed by the wrapped sampler's seed and epoch.
* :class:`SeededRandomSampler` shuffles with ``(seed, epoch)`` only, so resuming at epoch k
  sees the same order an uninterrupted run saw (a ``RandomSampler`` with a generator does not).

Example:
    >>> data = DetectionDataset(coco, train_ids, training_transforms())        # doctest: +SKIP
    >>> sampler = SeededRandomSampler(len(data), seed=0)                         # doctest: +SKIP
    >>> batches = GroupedBatchSampler(sampler, data.group_ids(), batch_size=4)   # doctest: +SKIP
    >>> loader = DataLoader(data, batch_sampler=batches, collate_fn=collate_fn)  # doctest: +SKIP
    >>> for epoch in range(epochs):                                              # doctest: +SKIP
    ...     batches.set_epoch(epoch)
    ...     for images, targets in loader: ...
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from detstack.errors import ConfigError, DatasetError
from training.coco import CocoDataset
from training.transforms import ToTensor, Transform

__all__ = [
    "DetectionDataset",
    "GroupedBatchSampler",
    "SeededRandomSampler",
    "aspect_ratio_groups",
    "collate_fn",
]


class DetectionDataset(Dataset):
    """Samples of ``coco`` restricted to ``image_ids``, through ``transforms``.

    Args:
        coco: the checked dataset.
        image_ids: which images (a split); sample ``i`` is ``image_ids[i]``.
        transforms: ``(image, target) -> (image, target)``; the output is made tensors
            afterwards if it is not already, so ``None`` simply gives tensors.
    """

    def __init__(
        self, coco: CocoDataset, image_ids: Sequence[int], transforms: Transform | None = None
    ) -> None:
        known = set(coco.image_ids)
        unknown = [i for i in image_ids if i not in known]
        if unknown:
            raise DatasetError(
                f"image ids {unknown[:10]} are not in dataset {coco.source} "
                f"({len(unknown)} unknown)"
            )
        self.coco = coco
        self.image_ids = [int(i) for i in image_ids]
        self.transforms = transforms
        self._to_tensor = ToTensor()

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image_id = self.image_ids[index]
        image: Any = self.coco.read_image(image_id)
        target: dict[str, Any] = self.coco.target(image_id)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return self._to_tensor(image, target)

    def aspect_ratios(self) -> list[float]:
        """Width / height of every sample, from the annotations (no image is read)."""
        ratios = []
        for image_id in self.image_ids:
            width, height = self.coco.image_size(image_id)
            ratios.append(width / height)
        return ratios

    def group_ids(self, bins_per_side: int = 3) -> list[int]:
        """Aspect-ratio group of every sample (see :func:`aspect_ratio_groups`)."""
        return aspect_ratio_groups(self.aspect_ratios(), bins_per_side)


def collate_fn(
    batch: Iterable[tuple[torch.Tensor, dict[str, torch.Tensor]]],
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """``[(image, target), ...] -> ([images], [targets])``; images keep their own sizes."""
    images, targets = [], []
    for image, target in batch:
        images.append(image)
        targets.append(target)
    return images, targets


def aspect_ratio_groups(ratios: Sequence[float], bins_per_side: int = 3) -> list[int]:
    """Group ids by aspect ratio, in bins evenly spaced in log2 between 1/2 and 2.

    With ``bins_per_side = k`` there are ``2k`` bins between ratios 1/2 and 2 plus one below and
    one above; square images (ratio 1.0) share a bin with slightly wider ones.
    """
    if bins_per_side < 1:
        raise ConfigError(f"bins_per_side must be at least 1, got {bins_per_side}")
    edges = 2.0 ** np.linspace(-1.0, 1.0, 2 * bins_per_side + 1)
    return [int(g) for g in np.digitize(np.asarray(ratios, dtype=np.float64), edges)]


class SeededRandomSampler(Sampler[int]):
    """A random permutation of ``range(length)`` that depends only on ``(seed, epoch)``."""

    def __init__(self, length: int, seed: int = 0) -> None:
        if length < 0:
            raise ConfigError(f"sampler length must be >= 0, got {length}")
        self.length = length
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.length)
        return iter(order.tolist())

    def __len__(self) -> int:
        return self.length


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches of indices from ``sampler`` whose ``group_ids`` are equal.

    Indices are taken in the wrapped sampler's order and put in their group's bucket; a bucket
    that reaches ``batch_size`` is yielded. When the sampler is exhausted, the partly filled
    buckets are emptied in the order their groups first appeared, as mixed batches, so every
    index of the epoch is used exactly once and the number of batches is
    ``ceil(len(sampler) / batch_size)`` (``floor`` with ``drop_last``): the same on every DDP
    rank, since ``DistributedSampler`` gives every rank the same number of indices.

    Args:
        sampler: yields dataset indices (any sampler, including ``DistributedSampler``).
        group_ids: group of each dataset index (``len(group_ids)`` = dataset length).
        batch_size: indices per batch.
        drop_last: drop the final batch when it is smaller than ``batch_size``.
    """

    def __init__(
        self,
        sampler: Sampler[int] | Iterable[int],
        group_ids: Sequence[int],
        batch_size: int,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        self.sampler = sampler
        self.group_ids = list(group_ids)
        self.batch_size = batch_size
        self.drop_last = drop_last

    def set_epoch(self, epoch: int) -> None:
        """Forward the epoch to the wrapped sampler (``DistributedSampler``, seeded ones)."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        buckets: dict[int, list[int]] = {}
        for index in self.sampler:
            bucket = buckets.setdefault(self.group_ids[index], [])
            bucket.append(int(index))
            if len(bucket) == self.batch_size:
                yield list(bucket)
                bucket.clear()
        leftover = [index for bucket in buckets.values() for index in bucket]
        for start in range(0, len(leftover), self.batch_size):
            batch = leftover[start : start + self.batch_size]
            if len(batch) == self.batch_size or not self.drop_last:
                yield batch

    def __len__(self) -> int:
        count = len(self.sampler)  # type: ignore[arg-type]
        if self.drop_last:
            return count // self.batch_size
        return math.ceil(count / self.batch_size)
