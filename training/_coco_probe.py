"""Check each declared image against its file: there, readable, and the size it is said to be.

Files are read through :mod:`detstack.images`, the one image policy of every stage: sizes are
the EXIF-*oriented* sizes, as annotation tools show the image. With ``decode_images`` every file
is decoded exactly as training will decode it (in parallel, cached by file fingerprint: see
:mod:`training._image_check`), so a truncated file fails here and not epochs later; otherwise
only the headers are read (:func:`detstack.images.probe_image`), which is quick but misses a
file whose header is fine and whose pixels are cut.

Example:
    >>> images = check_files(storage, declared, "images", findings, show=False,
    ...                      workers=4, decode_images=True, cache_dir=None)  # doctest: +SKIP
    >>> images[1].width, images[1].height                                     # doctest: +SKIP
    (640, 480)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from detstack.errors import ImageDecodeError, StorageError
from detstack.images import probe_image
from detstack.progress import progress
from training._coco_locate import escapes_root, exists, join
from training._coco_problems import Findings, Problem
from training._coco_schema import DeclaredImage, show
from training._image_check import default_workers, verify_images
from training.storage import LocalStorage, S3Storage

__all__ = ["CheckedImage", "check_files"]


@dataclass(frozen=True)
class CheckedImage:
    """An image whose file was found, read and matched its declared size."""

    id: int
    file_name: str  # as written in the annotations
    path: str  # relative to the storage root
    width: int  # EXIF-oriented
    height: int


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def check_files(
    storage: LocalStorage | S3Storage,
    declared: Mapping[int, DeclaredImage],
    image_dir: str,
    findings: Findings,
    *,
    show_progress: bool,
    workers: int | None,
    decode_images: bool,
    cache_dir: str | Path | None,
) -> dict[int, CheckedImage]:
    """The images whose file exists, decodes and has the declared size; the rest are findings.

    A missing ``width``/``height`` is taken from the file (and counted).
    """
    to_probe: list[tuple[int, str]] = []
    for image_id, image in declared.items():
        if escapes_root(image.file_name):
            findings.add(Problem.ESCAPING_FILE_NAME, f"image {image_id}: {show(image.file_name)}")
            continue
        path = join(image_dir, image.file_name)
        if not exists(storage, path):
            findings.add(Problem.MISSING_FILE, _short(storage.url(path)))
            continue
        to_probe.append((image_id, path))

    if decode_images:
        found, _ = verify_images(
            storage, to_probe, workers=workers, progress=show_progress, cache_dir=cache_dir
        )
        results = [found[image_id] for image_id, _ in to_probe]
    else:
        results = _probe_all(storage, to_probe, show_progress=show_progress, workers=workers)

    images: dict[int, CheckedImage] = {}
    for (image_id, path), result in zip(to_probe, results, strict=True):
        if isinstance(result, str):
            findings.add(Problem.UNREADABLE_FILE, result)
            continue
        image = declared[image_id]
        width, height = result
        if image.width is None or image.height is None:
            findings.add(Problem.SIZE_FROM_FILE)
        elif (image.width, image.height) != (width, height):
            hint = (
                " (it matches the stored size before EXIF orientation: boxes must refer "
                "to the oriented image, as annotation tools show it)"
                if (image.width, image.height) == (height, width)
                else ""
            )
            findings.add(
                Problem.SIZE_MISMATCH,
                f"{storage.url(path)} is declared {image.width}x{image.height} but is "
                f"{width}x{height}{hint}",
            )
            continue
        images[image_id] = CheckedImage(image_id, image.file_name, path, width, height)
    return images


def _probe(storage: LocalStorage | S3Storage, path: str) -> tuple[int, int] | str:
    """The oriented size of a file, or why it cannot be read."""
    try:
        return probe_image(storage.read_bytes(path), source=storage.url(path))
    except (StorageError, ImageDecodeError) as error:
        return str(error)


def _probe_all(
    storage: LocalStorage | S3Storage,
    items: Sequence[tuple[int, str]],
    *,
    show_progress: bool,
    workers: int | None,
) -> list[tuple[int, int] | str]:
    """Header sizes only (threads hide S3 latency): the quick check without decoding."""
    with ThreadPoolExecutor(max_workers=max(1, workers or default_workers())) as pool:
        return list(
            progress(
                pool.map(lambda item: _probe(storage, item[1]), items),
                total=len(items),
                desc="checking images",
                unit="image",
                enabled=show_progress,
            )
        )
