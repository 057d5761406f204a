"""Input samples of an exported version: a few images the model is shown with.

Every version keeps a few example images (the seed's ``input_samples``), and the latest version's
samples become Triton's ``model_warmup`` data. They come, in order of preference, from:

* the training dataset (``--samples-from DATASET``): annotated images of distinct sizes first;
* image files given by the user;
* otherwise synthetic images (:func:`training.synth.render_image`), so an export never lacks
  them.

Every image goes through the shared loader :func:`detstack.images.decode_image`, exactly as a
served request does. :func:`validation_images` turns samples into the parity gate's images:
the samples, a resized copy when they all share one size (the gate needs two sizes), and one
all-blank image.

Example:
    >>> samples = samples_from_dataset("data/shapes", count=3)       # doctest: +SKIP
    >>> [s.pixels.shape for s in samples]                             # doctest: +SKIP
    [(128, 128, 3), (128, 170, 3), (170, 128, 3)]
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from detstack.errors import ConfigError, DatasetError, ImageDecodeError
from detstack.images import decode_image, to_chw
from export.validation import ValidationImage

__all__ = [
    "MAX_SAMPLE_SIDE",
    "SampleImage",
    "samples_from_dataset",
    "samples_from_files",
    "synthetic_samples",
    "validation_images",
]

logger = logging.getLogger(__name__)

#: Samples larger than this (longer side, pixels) are scaled down: they are stored in every
#: version and sent to the server as raw warmup tensors at each model load.
MAX_SAMPLE_SIDE = 1280

#: Grey level of the gate's blank image (a uniform image a trained detector finds nothing in).
BLANK_LEVEL = 128


@dataclass(frozen=True)
class SampleImage:
    """One sample: a file name, its pixels (HWC RGB uint8), PNG/JPEG bytes and its origin."""

    name: str
    pixels: np.ndarray
    data: bytes
    source: str

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)``."""
        return int(self.pixels.shape[1]), int(self.pixels.shape[0])


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _safe_stem(name: str) -> str:
    stem = Path(name).stem
    cleaned = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in stem)
    return cleaned[:60] or "image"


def _from_bytes(index: int, name: str, data: bytes, source: str) -> SampleImage:
    pixels = decode_image(data, source=source)
    height, width = pixels.shape[:2]
    if max(width, height) > MAX_SAMPLE_SIDE:
        scale = MAX_SAMPLE_SIDE / max(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        pixels = np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR))
        logger.info("sample %s scaled from %dx%d to %dx%d", source, width, height, *size)
    # Stored as a PNG of exactly the pixels the gate and the warmup use (EXIF orientation
    # applied, RGB): a JPEG decoded by another library could differ by a few levels.
    return SampleImage(f"{index}-{_safe_stem(name)}.png", pixels, _png(pixels), source)


def samples_from_files(paths: Sequence[str | Path]) -> list[SampleImage]:
    """Samples from image files.

    Raises:
        ImageDecodeError: a file is missing or not an accepted image.
    """
    samples = []
    for index, path in enumerate(paths):
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as error:
            raise ImageDecodeError(
                f"{path}: cannot read sample image ({error.strerror or error})"
            ) from None
        samples.append(_from_bytes(index, path.name, data, str(path)))
    return samples


def samples_from_dataset(
    source: str | Path, *, count: int = 3, s3_endpoint_url: str | None = None
) -> list[SampleImage]:
    """``count`` images of a COCO dataset: annotated ones of distinct sizes first.

    Raises:
        DatasetError: the dataset cannot be loaded or has no image.
    """
    from training.coco import load_dataset

    dataset = load_dataset(str(source), s3_endpoint_url=s3_endpoint_url)
    if not dataset.image_ids:
        raise DatasetError(f"dataset {source} has no usable image to take samples from")
    annotated = [i for i in dataset.image_ids if len(dataset.target(i)["labels"])]
    others = [i for i in dataset.image_ids if i not in set(annotated)]
    chosen: list[int] = []
    seen_sizes: set[tuple[int, int]] = set()
    # First pass: one image per distinct size; second pass: fill up in id order.
    for candidates in (annotated, annotated + others):
        for image_id in candidates:
            if len(chosen) == count:
                break
            size = dataset.image_size(image_id)
            if image_id in chosen or (candidates is annotated and size in seen_sizes):
                continue
            chosen.append(image_id)
            seen_sizes.add(size)
    return [
        _from_bytes(
            index,
            dataset.file_name(image_id),
            dataset.read_image_bytes(image_id),
            dataset.image_url(image_id),
        )
        for index, image_id in enumerate(chosen)
    ]


def synthetic_samples(count: int = 3, *, size: int = 128, seed: int = 0) -> list[SampleImage]:
    """``count`` synthetic images of shapes, in landscape, portrait and square formats."""
    from training.synth import SynthConfig, render_image

    if count < 1:
        raise ConfigError(f"sample count must be at least 1, got {count}")
    config = SynthConfig(
        images=count, seed=seed, size=size, aspect_ratios=(1.5, 0.75, 1.0), negative_fraction=0.0
    )
    samples = []
    for index in range(count):
        pixels, _ = render_image(config, index)
        data = _png(pixels)
        samples.append(_from_bytes(index, f"synthetic-{index}", data, f"synthetic:{seed}:{index}"))
    return samples


def validation_images(samples: Sequence[SampleImage]) -> list[ValidationImage]:
    """The parity gate's images: every sample, a second size if needed, and a blank image."""
    if not samples:
        raise ConfigError("the parity gate needs at least one sample image")
    images = [ValidationImage(s.name, to_chw(s.pixels)) for s in samples]
    sizes = {s.size for s in samples}
    if len(sizes) < 2:
        first = samples[0]
        width, height = first.size
        new_size = (max(16, round(width * 1.25)), max(16, round(height * 0.8)))
        resized = np.asarray(
            Image.fromarray(first.pixels).resize(new_size, Image.Resampling.BILINEAR)
        )
        images.append(ValidationImage(f"{first.name} resized", to_chw(resized)))
    width, height = samples[0].size
    blank = np.full((3, max(16, height), max(16, width)), BLANK_LEVEL, dtype=np.uint8)
    images.append(ValidationImage("blank", blank, blank=True))
    return images


def check_sample_source(paths: Sequence[str | Path]) -> None:
    """Fail early (before the slow export) when a sample path does not exist."""
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise ImageDecodeError(f"sample image(s) not found: {', '.join(missing)}")
