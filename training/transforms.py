"""Training transforms: each one is a callable ``(image, target) -> (image, target)``.

A detection transform must move the boxes with the pixels, so image and target travel together.
``image`` is an HWC uint8 numpy array (as :meth:`CocoDataset.read_image` returns it) or, after
:class:`ToTensor`, a float32 CHW tensor in [0, 1]; ``target`` holds ``boxes`` (N, 4) xyxy in
pixels, ``labels`` (N,) and ``image_id``. Randomness comes from torch's global generator, which
DataLoader seeds per worker from the loader's generator, so a seeded run flips the same images.

Example:
    >>> transforms = training_transforms(flip_probability=0.5)
    >>> image, target = transforms(pixels, dataset.target(image_id))   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from detstack.errors import ConfigError

__all__ = [
    "Compose",
    "RandomHorizontalFlip",
    "ToTensor",
    "Transform",
    "evaluation_transforms",
    "training_transforms",
]

Target = dict[str, Any]
Transform = Callable[[Any, Target], tuple[Any, Target]]


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Any, target: Target) -> tuple[Any, Target]:
        for transform in self.transforms:
            image, target = transform(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class ToTensor:
    """HWC uint8 numpy → CHW float32 tensor in [0, 1]; target arrays → tensors.

    ``boxes`` become float32 (N, 4), ``labels`` int64 (N,), ``image_id`` an int64 scalar tensor.
    Inputs that already are tensors pass through unchanged, so applying it twice is harmless.
    """

    def __call__(self, image: Any, target: Target) -> tuple[torch.Tensor, Target]:
        if not isinstance(image, torch.Tensor):
            array = np.asarray(image)
            if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
                raise ValueError(
                    f"ToTensor expects an (H, W, 3) uint8 array, got {array.shape} {array.dtype}"
                )
            image = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
            image = image.to(torch.float32).div_(255.0)
        target = dict(target)
        target["boxes"] = torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4)
        target["labels"] = torch.as_tensor(target["labels"], dtype=torch.int64).reshape(-1)
        if "image_id" in target:
            target["image_id"] = torch.as_tensor(target["image_id"], dtype=torch.int64)
        return image, target

    def __repr__(self) -> str:
        return "ToTensor()"


class RandomHorizontalFlip:
    """Mirror the image left-right with probability ``p``, and its boxes with it.

    A box ``[x1, y1, x2, y2]`` in an image ``W`` pixels wide becomes ``[W - x2, y1, W - x1,
    y2]``: pixel edges, not pixel centres, so a box touching the left edge touches the right one.
    Works on CHW tensors and on HWC numpy arrays.
    """

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"flip probability must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, image: Any, target: Target) -> tuple[Any, Target]:
        if self.p == 0.0 or torch.rand(()).item() >= self.p:
            return image, target
        return hflip(image, target)

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


def hflip(image: Any, target: Target) -> tuple[Any, Target]:
    """Mirror ``image`` and ``target["boxes"]`` left-right (always)."""
    target = dict(target)
    if isinstance(image, torch.Tensor):
        width = image.shape[-1]
        image = image.flip(-1)
    else:
        width = image.shape[1]
        image = np.ascontiguousarray(image[:, ::-1])
    boxes = target["boxes"]
    flipped = boxes.clone() if isinstance(boxes, torch.Tensor) else np.array(boxes, copy=True)
    flipped[:, 0] = width - boxes[:, 2]
    flipped[:, 2] = width - boxes[:, 0]
    target["boxes"] = flipped
    return image, target


def training_transforms(flip_probability: float = 0.5) -> Compose:
    """What ``detstack train`` applies to training images: tensors, then a random flip."""
    steps: list[Transform] = [ToTensor()]
    if flip_probability > 0:
        steps.append(RandomHorizontalFlip(flip_probability))
    return Compose(steps)


def evaluation_transforms() -> Compose:
    """What validation images get: tensors only (the model resizes and normalises itself)."""
    return Compose([ToTensor()])
