"""Decode every image of a dataset once, in parallel, and remember which files were good.

A header probe finds a missing or mislabelled file, but not a truncated one: Pillow reads the
size from the first bytes and only fails when the pixels are decoded, which in training happens
epochs later, in a DataLoader worker. :func:`verify_images` therefore decodes every image with
:func:`detstack.images.decode_image` (exactly what training does), on a thread pool sized to the
CPU count (Pillow's decoders release the GIL; S3 latency also hides behind the threads).

Decoding a large dataset costs minutes, so each good result is cached on local disk
(``<cache dir>/image-check/<hash of the dataset location>.json``) under the file's
fingerprint: path, size and modification time for a local file, the SHA-256 of the content
otherwise (S3 objects are read from the local object cache). A rerun decodes only files that
are new or changed; a failure is never cached, so a fixed file is checked again. Entries also
depend on the Pillow version and the pixel limit: a change of either checks everything again.

Example:
    >>> results, cached = verify_images(storage, [(1, "images/1.png")], workers=4)  # doctest: +SKIP
    >>> results[1]                                                       # doctest: +SKIP
    (640, 480)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import PIL

from detstack.atomic import atomic_write_json
from detstack.errors import ImageDecodeError, StorageError
from detstack.images import DEFAULT_MAX_PIXELS, decode_image
from detstack.progress import progress as show_progress
from training.storage import LocalStorage, S3Storage, default_cache_dir

__all__ = ["default_workers", "verify_images"]

logger = logging.getLogger(__name__)

#: Bump when what a "good" image means changes (the decoder policy), to drop old entries.
_CACHE_FORMAT = 1


def default_workers() -> int:
    """Threads for decoding: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _cache_file(cache_dir: Path, location: str) -> Path:
    digest = hashlib.sha256(location.encode("utf-8")).hexdigest()[:32]
    return cache_dir / "image-check" / f"{digest}.json"


def _cache_header(max_pixels: int) -> dict[str, object]:
    return {"format": _CACHE_FORMAT, "pillow": PIL.__version__, "max_pixels": max_pixels}


def _load_cache(path: Path, header: dict[str, object]) -> dict[str, list]:
    """The cached ``{relative path: [fingerprint, width, height]}``; empty when unusable."""
    try:
        document = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError) as error:
        logger.warning("ignoring the image check cache %s: %s", path, error)
        return {}
    if not isinstance(document, dict) or document.get("header") != header:
        return {}
    entries = document.get("entries")
    return entries if isinstance(entries, dict) else {}


def _save_cache(path: Path, header: dict[str, object], entries: dict[str, list]) -> None:
    """Write atomically (several ranks may check the same dataset at once); never fail."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"header": header, "entries": entries}, indent=None)
    except OSError as error:
        # The cache saves time only: a full or read-only disk must not stop the check.
        logger.warning("cannot write the image check cache %s: %s", path, error)


def _valid_entry(entry: object) -> list | None:
    """A cache entry ``[fingerprint, width, height]``, or None for anything else."""
    if (
        isinstance(entry, list)
        and len(entry) == 3
        and isinstance(entry[0], str)
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in entry[1:])
    ):
        return entry
    return None


def _local_fingerprint(storage: LocalStorage, path: str) -> str | None:
    try:
        stat = (storage.root / path).stat()
    except OSError:
        return None
    return f"stat:{stat.st_size}:{stat.st_mtime_ns}"


def _check_one(
    storage: LocalStorage | S3Storage, path: str, known: list | None, max_pixels: int
) -> tuple[tuple[int, int] | str, str | None, bool]:
    """``(oriented size or why not, fingerprint to cache, came from the cache)`` of one file."""
    fingerprint = _local_fingerprint(storage, path) if isinstance(storage, LocalStorage) else None
    if fingerprint is not None and known is not None and known[0] == fingerprint:
        return (known[1], known[2]), fingerprint, True
    try:
        data = storage.read_bytes(path)
    except StorageError as error:
        return str(error), None, False
    if fingerprint is None:
        fingerprint = "sha256:" + hashlib.sha256(data).hexdigest()
        if known is not None and known[0] == fingerprint:
            return (known[1], known[2]), fingerprint, True
    try:
        pixels = decode_image(data, source=storage.url(path), max_pixels=max_pixels)
    except ImageDecodeError as error:
        return str(error), None, False
    height, width = pixels.shape[:2]
    return (width, height), fingerprint, False


def verify_images(
    storage: LocalStorage | S3Storage,
    items: Sequence[tuple[int, str]],
    *,
    workers: int | None = None,
    progress: bool = False,
    cache_dir: str | Path | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[dict[int, tuple[int, int] | str], int]:
    """Decode each ``(image id, relative path)`` and return what was found.

    Args:
        storage: where the files are.
        items: the images to check.
        workers: decoding threads (default: the CPU count, see :func:`default_workers`).
        progress: show progress (:func:`detstack.progress.progress`: a bar or log lines).
        cache_dir: the cache folder (default :func:`training.storage.default_cache_dir`).
        max_pixels: the decoder's pixel limit (part of the cache key).

    Returns:
        ``({image id: oriented (width, height), or the error message}, how many results came
        from the cache)``.
    """
    location = (
        str(storage.root.resolve()) if isinstance(storage, LocalStorage) else storage.location
    )
    cache_path = _cache_file(
        Path(cache_dir) if cache_dir is not None else default_cache_dir(), location
    )
    header = _cache_header(max_pixels)
    entries = _load_cache(cache_path, header)
    results: dict[int, tuple[int, int] | str] = {}
    from_cache = 0
    changed = False

    # What the cache knows is looked up here, so the worker threads never read ``entries``.
    known = [_valid_entry(entries.get(path)) for _, path in items]

    def check(index: int) -> tuple[tuple[int, int] | str, str | None, bool]:
        return _check_one(storage, items[index][1], known[index], max_pixels)

    with ThreadPoolExecutor(max_workers=max(1, workers or default_workers())) as pool:
        for (image_id, path), (result, fingerprint, cached) in show_progress(
            zip(items, pool.map(check, range(len(items))), strict=True),
            total=len(items),
            desc="decoding images",
            unit="img",
            enabled=progress,
        ):
            results[image_id] = result
            from_cache += cached
            if isinstance(result, str):
                changed |= entries.pop(path, None) is not None
            elif not cached:
                entries[path] = [fingerprint, result[0], result[1]]
                changed = True
    if changed:
        _save_cache(cache_path, header, entries)
    logger.info(
        "decoded %d images (%d unchanged since the last check, from %s)",
        len(items) - from_cache,
        from_cache,
        cache_path,
    )
    return results, from_cache
