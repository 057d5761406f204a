"""The images a benchmark sends: files, folders or a dataset's images, optionally photo-sized.

Also the reference a client's cost is held against: a bare Pillow decode of the same files.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench._results import BenchConfig
from detstack.errors import ConfigError, ImageDecodeError
from detstack.images import probe_image

logger = logging.getLogger(__name__)


_IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


def load_bench_images(config: BenchConfig) -> list[tuple[str, bytes]]:
    """``(name, file bytes)`` of up to ``max_images`` usable images (unusable ones skipped)."""
    found: list[tuple[str, bytes]] = []
    if config.dataset:
        from training.coco import load_dataset

        dataset = load_dataset(config.dataset)
        for image_id in dataset.image_ids[: config.max_images]:
            found.append((dataset.file_name(image_id), dataset.read_image_bytes(image_id)))
    else:
        paths: list[Path] = []
        for entry in config.images:
            entry = Path(entry)
            if entry.is_dir():
                paths.extend(
                    sorted(
                        p
                        for p in entry.rglob("*")
                        if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES
                    )
                )
            elif entry.is_file():
                paths.append(entry)
            else:
                raise ConfigError(f"{entry} is neither an image file nor a folder")
        for path in paths:
            if len(found) >= config.max_images:
                break
            data = path.read_bytes()
            try:
                probe_image(data, source=str(path))
            except ImageDecodeError as error:
                logger.warning("skipping %s", error)
                continue
            found.append((str(path), data))
    if not found:
        raise ConfigError("no usable image to benchmark on (check the paths or the dataset)")
    return found


def pillow_decode_cpu_ms(images: Sequence[tuple[str, bytes]], rounds: int = 3) -> float:
    """Mean CPU milliseconds of a bare Pillow decode (``Image.open`` + RGB pixels) per image.

    The reference the client's own cost is held against: the least a client that decodes
    would pay. The median of ``rounds`` is taken per image.
    """
    from PIL import Image

    costs = []
    for _, data in images:
        rounds_ms = []
        for _ in range(rounds):
            start = time.thread_time()
            np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            rounds_ms.append((time.thread_time() - start) * 1e3)
        costs.append(float(np.median(rounds_ms)))
    return float(np.mean(costs)) if costs else float("nan")


def photo_jpeg(data: bytes, size: tuple[int, int]) -> bytes:
    """``data`` decoded and re-encoded as a ``size`` JPEG (quality 90): a photo-sized file."""
    from PIL import Image

    from detstack.images import decode_image

    image = Image.fromarray(decode_image(data)).resize(size, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()
