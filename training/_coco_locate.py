"""Find a COCO dataset's annotations file and its images folder, in a folder or on ``s3://``.

Layouts accepted (``ROOT`` is a folder or ``s3://bucket/prefix``):

* ``ROOT/annotations.json``, or ``ROOT/annotations/<name>.json`` when it is the only JSON file
  there (``instances_train2017.json``), or an explicit ``.json`` path (the root is its folder,
  or the folder above when that folder is called ``annotations``);
* images named by ``file_name`` relative to ``ROOT``, ``ROOT/images`` or ``ROOT/<split>``
  (``train2017`` for ``instances_train2017.json``), whichever holds them; or ``images_dir``.

A ``file_name`` that would leave the root (absolute, a drive, a URL, ``..``) is never looked up:
:func:`escapes_root` says so and the caller reports it.

Example:
    >>> storage, name = open_root("data/coco/annotations/instances_val2017.json")  # doctest: +SKIP
    >>> name                                                                     # doctest: +SKIP
    'annotations/instances_val2017.json'
    >>> image_dir(storage, name, ["000001.jpg"], images_dir=None)                # doctest: +SKIP
    'val2017'
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from detstack.errors import DatasetError, StorageError
from training.storage import LocalStorage, S3Storage, is_s3_url, open_storage

__all__ = ["escapes_root", "exists", "image_dir", "join", "open_root", "read_annotations"]

#: How many images are looked up to decide which folder holds them.
_LAYOUT_SAMPLE = 20


def open_root(
    source: str, *, endpoint_url: str | None = None, cache_dir: str | Path | None = None
) -> tuple[LocalStorage | S3Storage, str]:
    """``(storage of the dataset root, annotations file relative to it)`` for a source.

    Raises:
        DatasetError: no annotations file, or several and none chosen.
        StorageError: the folder or bucket cannot be read.
    """
    if source.endswith(".json"):
        root, annotations_file = _split_json_source(source)
    else:
        root, annotations_file = source, ""
    storage = open_storage(root, endpoint_url=endpoint_url, cache_dir=cache_dir)
    return storage, annotations_file or _find_annotations(storage)


def read_annotations(storage: LocalStorage | S3Storage, annotations_file: str) -> bytes:
    """The annotations file's bytes, or a :class:`DatasetError` saying why not."""
    try:
        return storage.read_bytes(annotations_file)
    except StorageError as error:
        raise DatasetError(f"cannot read the annotations: {error}") from None


def _split_json_source(source: str) -> tuple[str, str]:
    """``(root, annotations name relative to root)`` for an explicit ``.json`` source."""
    if is_s3_url(source):
        parent, _, name = source.rstrip("/").rpartition("/")
        if parent.rstrip("/").endswith("/annotations"):
            return parent[: -len("/annotations")], f"annotations/{name}"
        return parent, name
    path = Path(source).expanduser()
    if path.parent.name == "annotations":
        return str(path.parent.parent), f"annotations/{path.name}"
    return str(path.parent), path.name


def _find_annotations(storage: LocalStorage | S3Storage) -> str:
    if storage.exists("annotations.json"):
        return "annotations.json"
    candidates = [n for n in storage.list_files("annotations") if n.endswith(".json")]
    candidates = [n for n in candidates if n.count("/") == 1]
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        raise DatasetError(
            f"{storage.location} has several annotation files ({', '.join(candidates)}); "
            f"pass the path of the one to use, e.g. {storage.url(candidates[0])}"
        )
    raise DatasetError(
        f"no annotations in {storage.location}: expected annotations.json or "
        f"annotations/<name>.json there, or the path of a COCO .json file"
    )


def image_dir(
    storage: LocalStorage | S3Storage,
    annotations_file: str,
    file_names: Sequence[str],
    *,
    images_dir: str | None,
) -> str:
    """The folder (relative to the root) the images' ``file_name`` values are relative to.

    ``images_dir`` when given; otherwise the candidate folder holding most of the first
    :data:`_LAYOUT_SAMPLE` files (names escaping the root are not looked up).
    """
    if images_dir is not None:
        return images_dir.strip("/")
    sample = [name for name in file_names if not escapes_root(name)][:_LAYOUT_SAMPLE]
    best, best_found = "", -1
    for candidate in _image_dir_candidates(annotations_file):
        found = sum(exists(storage, join(candidate, name)) for name in sample)
        if found > best_found:
            best, best_found = candidate, found
        if found == len(sample):
            break
    return best


def _image_dir_candidates(annotations_file: str) -> list[str]:
    stem = PurePosixPath(annotations_file).stem
    split = stem.split("_", 1)[1] if "_" in stem else stem
    candidates = ["", "images", split, f"images/{split}"]
    return list(dict.fromkeys(c for c in candidates if c != "annotations"))


def join(directory: str, name: str) -> str:
    """A path relative to the root: ``name`` inside ``directory`` ("" is the root)."""
    return f"{directory}/{name}" if directory else name


def escapes_root(file_name: str) -> bool:
    """Absolute, drive-qualified or ``..`` names would read files outside the dataset."""
    unified = file_name.replace("\\", "/")
    parts = PurePosixPath(unified).parts
    return (
        unified.startswith("/")
        or (len(unified) > 1 and unified[1] == ":")
        or "://" in unified
        or ".." in parts
    )


def exists(storage: LocalStorage | S3Storage, path: str) -> bool:
    """Whether a file is there; a name the OS refuses (too long, NUL byte) is not there."""
    try:
        return storage.exists(path)
    except (OSError, ValueError):
        return False
