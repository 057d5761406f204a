"""Load a COCO detection dataset from a folder or ``s3://``, check it, and serve its samples.

:func:`load_dataset` reads the annotations, checks every image and annotation before training
starts, and returns a :class:`CocoDataset`: the category map, the image ids, per-image training
targets (numpy), image decoding through :func:`detstack.images.decode_image`, the ground truth
for ``pycocotools`` evaluation, a fingerprint for provenance and a :class:`DatasetReport`.

Layouts accepted (``ROOT`` is a folder or ``s3://bucket/prefix``):

* ``ROOT/annotations.json``, or ``ROOT/annotations/<name>.json`` when it is the only JSON file
  there (``instances_train2017.json``), or an explicit ``.json`` path (the root is its folder,
  or the folder above when that folder is called ``annotations``);
* images named by ``file_name`` relative to ``ROOT``, ``ROOT/images`` or ``ROOT/<split>``
  (``train2017`` for ``instances_train2017.json``), whichever holds them; or ``images_dir``.

Policies (what a careful user would do by hand, counted in the report):

* boxes reaching outside the image are clamped to it; boxes with zero or negative width or
  height (before or after clamping) are dropped;
* ``iscrowd=1`` annotations are not training targets but stay in the evaluation ground truth
  (COCOeval ignores detections matching them); a missing ``iscrowd`` means 0; a missing
  ``segmentation`` is fine; a missing ``area`` is the clamped box area; a missing annotation
  ``id`` is assigned; a missing image ``width``/``height`` is taken from the file;
* images without (non-crowd) annotations are kept as negatives: they teach the detector what
  background looks like;
* sizes are the EXIF-*oriented* sizes (see :mod:`detstack.images`), as annotation tools show.

Fatal, all reported at once, naming the items: unknown ``category_id`` or ``image_id``,
malformed entries (ids must be integers in 0..2**63-1, the int64 of training's tensors),
annotation ids used twice (pycocotools would keep only the last, and COCO evaluation would
silently lose ground truth: the user fixes the export rather than have ids re-numbered behind
their back), ``file_name`` escaping the root (absolute or ``..``), missing image files, image
files that do not decode (every image is decoded, in parallel and cached by file fingerprint,
see :mod:`training._image_check`), declared ``width``/``height`` differing from the file,
nothing left to train on. A file that is not COCO (not JSON, nested too deeply, a number too
long to parse, a category that is not an object) is a :class:`DatasetError` naming the place.

Example:
    >>> dataset = load_dataset("data/shapes")                       # doctest: +SKIP
    >>> print(format_report(dataset.report))                        # doctest: +SKIP
    >>> train_ids, val_ids = split_dataset(dataset.image_ids, 0.2, seed=0)  # doctest: +SKIP
    >>> pixels = dataset.read_image(train_ids[0])                   # doctest: +SKIP
    >>> dataset.target(train_ids[0])["boxes"].shape                 # doctest: +SKIP
    (3, 4)
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import re
import reprlib
import sys
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from detstack.errors import DatasetError, ImageDecodeError, StorageError
from detstack.images import decode_image, probe_image
from training._image_check import default_workers, verify_images
from training.categories import CategoryMap
from training.storage import LocalStorage, S3Storage, is_s3_url, open_storage

__all__ = [
    "CategoryCount",
    "CocoDataset",
    "DatasetCheckError",
    "DatasetReport",
    "format_report",
    "load_dataset",
    "split_dataset",
]

logger = logging.getLogger(__name__)

#: How many offending items an error message names before saying "and N more".
_NAMED_ITEMS = 10
#: How many images are looked up to decide which folder holds them.
_LAYOUT_SAMPLE = 20
#: Ids must fit the int64 tensors of the transforms and pycocotools' numpy arrays.
_MAX_ID = 2**63 - 1
#: Nesting reported as "too deep" when the JSON parser hits Python's recursion limit.
_NESTING_REPORTED = 500

# Offending values are shown short: a hostile file can hold a 100 MB string or deep nesting.
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 80
_SHORT.maxlong = 40
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = 6
_SHORT.maxlevel = 3


@dataclass(frozen=True)
class CategoryCount:
    """One category of the report: ids, and how much training data it has."""

    dataset_id: int
    name: str
    label: int
    annotations: int
    images: int


@dataclass(frozen=True)
class DatasetReport:
    """What :func:`load_dataset` found. Problem counts are 0 for a clean dataset.

    ``errors`` holds one line per fatal problem; the dataset is usable when it is empty.
    """

    source: str
    annotations_file: str
    images: int = 0
    annotations: int = 0
    categories: tuple[CategoryCount, ...] = ()
    training_boxes: int = 0
    negative_images: int = 0
    crowd_annotations: int = 0
    clamped_boxes: int = 0
    dropped_empty_boxes: int = 0
    dropped_outside_boxes: int = 0
    missing_iscrowd: int = 0
    missing_segmentation: int = 0
    missing_area: int = 0
    assigned_annotation_ids: int = 0
    sizes_from_files: int = 0
    categories_without_boxes: int = 0
    unknown_category_annotations: int = 0
    unknown_image_annotations: int = 0
    duplicate_annotation_ids: int = 0
    malformed_entries: int = 0
    escaping_file_names: int = 0
    missing_files: int = 0
    unreadable_files: int = 0
    size_mismatches: int = 0
    fingerprint: str = ""
    errors: tuple[str, ...] = ()

    @property
    def usable(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        """Plain values (for JSON, checkpoints and run metadata)."""
        data = {k: v for k, v in self.__dict__.items() if k != "categories"}
        data["categories"] = [c.__dict__.copy() for c in self.categories]
        data["errors"] = list(self.errors)
        data["usable"] = self.usable
        return data


class DatasetCheckError(DatasetError):
    """The dataset failed its checks; ``report`` says everything that was found."""

    def __init__(self, report: DatasetReport) -> None:
        lines = "\n".join(f"  - {line}" for line in report.errors)
        super().__init__(f"dataset {report.source} cannot be used:\n{lines}")
        self.report = report


@dataclass(frozen=True)
class _Image:
    id: int
    file_name: str  # as written in the annotations
    path: str  # relative to the storage root
    width: int
    height: int


@dataclass
class _Problems:
    """Offending items per fatal problem kind, collected before failing once."""

    items: dict[str, list[str]] = field(default_factory=dict)

    def add(self, kind: str, item: str) -> None:
        self.items.setdefault(kind, []).append(item)

    def count(self, kind: str) -> int:
        return len(self.items.get(kind, ()))

    def lines(self) -> tuple[str, ...]:
        result = []
        for kind, items in self.items.items():
            named = "; ".join(items[:_NAMED_ITEMS])
            more = f" (and {len(items) - _NAMED_ITEMS} more)" if len(items) > _NAMED_ITEMS else ""
            result.append(f"{len(items)} {kind}: {named}{more}")
        return tuple(result)


class CocoDataset:
    """A checked COCO dataset. Build it with :func:`load_dataset`.

    Attributes:
        source: where it was loaded from (path or ``s3://`` URL of the root).
        categories: dataset category ids ↔ training labels 1..K.
        image_ids: every usable image id (negatives included), sorted.
        report: what the checks found.
        fingerprint: sha256 of the annotations file content and the image file list.
    """

    def __init__(
        self,
        *,
        storage: LocalStorage | S3Storage,
        source: str,
        annotations_file: str,
        categories: CategoryMap,
        images: Mapping[int, _Image],
        targets: Mapping[int, tuple[np.ndarray, np.ndarray]],
        ground_truth: Mapping[int, list[dict[str, Any]]],
        report: DatasetReport,
    ) -> None:
        self._storage = storage
        self.source = source
        self.annotations_file = annotations_file
        self.categories = categories
        self._images = dict(images)
        self._targets = dict(targets)
        self._ground_truth = dict(ground_truth)
        self.image_ids: list[int] = sorted(self._images)
        self.report = report
        self.fingerprint = report.fingerprint

    def __len__(self) -> int:
        return len(self.image_ids)

    def __repr__(self) -> str:
        return (
            f"CocoDataset(source={self.source!r}, images={len(self.image_ids)}, "
            f"categories={len(self.categories.dataset_ids)})"
        )

    def _image(self, image_id: int) -> _Image:
        try:
            return self._images[image_id]
        except KeyError:
            raise DatasetError(f"image id {image_id} is not in dataset {self.source}") from None

    def image_size(self, image_id: int) -> tuple[int, int]:
        """``(width, height)`` of an image (EXIF-oriented, checked against the file)."""
        image = self._image(image_id)
        return image.width, image.height

    def file_name(self, image_id: int) -> str:
        """The image's ``file_name`` as the annotations write it."""
        return self._image(image_id).file_name

    def image_url(self, image_id: int) -> str:
        """Full path or ``s3://`` URL of the image file."""
        return self._storage.url(self._image(image_id).path)

    def read_image_bytes(self, image_id: int) -> bytes:
        """The image file's bytes (from the local cache for S3 after the first read)."""
        try:
            return self._storage.read_bytes(self._image(image_id).path)
        except StorageError as error:
            raise DatasetError(f"image {image_id}: {error}") from None

    def read_image(self, image_id: int) -> np.ndarray:
        """Decoded pixels, HWC RGB uint8, EXIF orientation applied."""
        image = self._image(image_id)
        pixels = decode_image(self.read_image_bytes(image_id), source=self.image_url(image_id))
        if pixels.shape[:2] != (image.height, image.width):
            # Checked at load time; a file replaced since then must not train on wrong boxes.
            raise DatasetError(
                f"{self.image_url(image_id)} is now {pixels.shape[1]}x{pixels.shape[0]}, "
                f"but the dataset says {image.width}x{image.height}"
            )
        return pixels

    def target(self, image_id: int) -> dict[str, Any]:
        """Training target: ``boxes`` float32 (N, 4) xyxy, ``labels`` int64 1..K, ``image_id``.

        Crowd annotations and dropped boxes are not in it; a negative image has N = 0.
        """
        self._image(image_id)
        boxes, labels = self._targets[image_id]
        return {"boxes": boxes.copy(), "labels": labels.copy(), "image_id": int(image_id)}

    def to_coco_api(self, image_ids: Iterable[int] | None = None) -> Any:
        """Ground truth of ``image_ids`` (default: all) as a ``pycocotools.coco.COCO`` object.

        Category ids are the dataset's own; crowd annotations are kept (``iscrowd``) so COCOeval
        ignores detections on them; boxes are clamped, dropped boxes left out.
        """
        from pycocotools.coco import COCO

        ids = self.image_ids if image_ids is None else [int(i) for i in image_ids]
        document = {
            "images": [
                {
                    "id": i,
                    "file_name": self._image(i).file_name,
                    "width": self._image(i).width,
                    "height": self._image(i).height,
                }
                for i in ids
            ],
            "annotations": [dict(a) for i in ids for a in self._ground_truth.get(i, ())],
            "categories": [
                {"id": cid, "name": name}
                for cid, name in zip(
                    self.categories.dataset_ids, self.categories.names, strict=True
                )
            ],
        }
        coco = COCO()
        coco.dataset = document
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco.createIndex()
        return coco


def split_dataset(
    image_ids: Sequence[int], val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Split image ids into ``(train_ids, val_ids)``, the same for the same arguments.

    ``val_fraction`` 0 gives no validation images; otherwise at least one image goes to each
    side. Both lists are sorted.

    Raises:
        DatasetError: ``val_fraction`` outside [0, 1), or too few images to split.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be in [0, 1), got {val_fraction}")
    ids = sorted(int(i) for i in image_ids)
    if val_fraction == 0.0:
        return ids, []
    if len(ids) < 2:
        raise DatasetError(
            f"cannot split {len(ids)} image(s) into training and validation; need at least 2"
        )
    order = np.random.default_rng(seed).permutation(len(ids))
    val_count = min(len(ids) - 1, max(1, round(len(ids) * val_fraction)))
    val = sorted(ids[i] for i in order[:val_count])
    train = sorted(ids[i] for i in order[val_count:])
    return train, val


# --------------------------------------------------------------------------- locating files


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


def _image_dir_candidates(annotations_file: str) -> list[str]:
    stem = PurePosixPath(annotations_file).stem
    split = stem.split("_", 1)[1] if "_" in stem else stem
    candidates = ["", "images", split, f"images/{split}"]
    return list(dict.fromkeys(c for c in candidates if c != "annotations"))


def _choose_image_dir(
    storage: LocalStorage | S3Storage, annotations_file: str, file_names: Sequence[str]
) -> str:
    sample = list(file_names[:_LAYOUT_SAMPLE])
    best, best_found = "", -1
    for candidate in _image_dir_candidates(annotations_file):
        found = sum(_exists(storage, _join(candidate, name)) for name in sample)
        if found > best_found:
            best, best_found = candidate, found
        if found == len(sample):
            break
    return best


def _join(directory: str, name: str) -> str:
    return f"{directory}/{name}" if directory else name


def _escapes_root(file_name: str) -> bool:
    """Absolute, drive-qualified or ``..`` names would read files outside the dataset."""
    unified = file_name.replace("\\", "/")
    parts = PurePosixPath(unified).parts
    return (
        unified.startswith("/")
        or (len(unified) > 1 and unified[1] == ":")
        or "://" in unified
        or ".." in parts
    )


# --------------------------------------------------------------------------- checking


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_id(value: Any) -> bool:
    """Ids are integers 0..2**63-1: a larger one overflows the int64 tensors of training."""
    return _is_int(value) and 0 <= value <= _MAX_ID


def _is_number(value: Any) -> bool:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float (JSON has no size limit)
        return False


def _show(value: Any) -> str:
    """A bounded ``repr`` for messages: hostile files hold huge strings and deep nesting."""
    try:
        return _SHORT.repr(value)
    except (RecursionError, ValueError):
        return f"<{type(value).__name__}>"


def _id_problem(value: Any) -> str:
    """What is wrong with an id, naming the value (``2**70`` is spelt out, then explained)."""
    if not _is_int(value):
        return f"{_show(value)} (type {type(value).__name__}); expected an integer"
    return f"{_show(value)}; expected an integer in 0..2**63-1 (int64)"


def _place(data: bytes, offset: int) -> str:
    line = data.count(b"\n", 0, offset) + 1
    column = offset - data.rfind(b"\n", 0, offset)
    return f"line {line} column {column}"


def _deep_nesting_place(data: bytes) -> str:
    """Where the brackets first nest deeper than :data:`_NESTING_REPORTED` (strings skipped).

    Only run after the parser failed, so its pure-Python loop costs nothing on good files.
    """
    depth = 0
    for match in re.finditer(rb'"(?:[^"\\]|\\.)*"|[\[{]|[\]}]', data):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth > _NESTING_REPORTED:
                return f" (deeper than {_NESTING_REPORTED} levels at {_place(data, match.start())})"
        elif token in (b"]", b"}"):
            depth -= 1
    return ""


def _long_integer_place(data: bytes) -> str:
    limit = sys.get_int_max_str_digits()
    # The look-behind starts a match only where a digit run starts: linear on hostile files.
    match = re.search(rb"(?<![0-9])-?[0-9]{%d,}" % (limit + 1), data) if limit else None
    if match is None:
        return ""
    digits = len(match.group().lstrip(b"-"))
    return f": a {digits}-digit integer at {_place(data, match.start())}"


def _parse_document(data: bytes, where: str) -> dict[str, Any]:
    try:
        document = json.loads(data)
    except UnicodeDecodeError as error:
        raise DatasetError(f"{where} is not UTF-8 text ({error})") from None
    except json.JSONDecodeError as error:
        raise DatasetError(
            f"{where} is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None
    except RecursionError:
        raise DatasetError(
            f"{where} nests arrays/objects too deeply to parse{_deep_nesting_place(data)}; "
            "a COCO file nests a few levels"
        ) from None
    except ValueError as error:  # Python refuses int literals over 4300 digits (CVE-2020-10735)
        raise DatasetError(
            f"{where} holds a number too long to parse{_long_integer_place(data)} ({error})"
        ) from None
    if not isinstance(document, dict):
        raise DatasetError(
            f"{where} holds a {type(document).__name__}; expected a COCO object with 'images', "
            f"'annotations' and 'categories'"
        )
    for key in ("images", "categories"):
        if not isinstance(document.get(key), list):
            raise DatasetError(
                f"{where}: {key!r} is {'missing' if key not in document else 'not a list'}; "
                f"a COCO detection file needs 'images', 'annotations' and 'categories' lists"
            )
    annotations = document.get("annotations", [])
    if not isinstance(annotations, list):
        raise DatasetError(f"{where}: 'annotations' is not a list")
    document["annotations"] = annotations
    _check_categories(document["categories"], where)
    return document


def _check_categories(entries: list[Any], where: str) -> None:
    """Each category is an object with an id in 0..2**63-1 and a plain name, or fail naming it."""
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise DatasetError(
                f"{where}: categories[{index}] is {_show(entry)} (type {type(entry).__name__}); "
                "expected an object with 'id' and 'name'"
            )
        if not _is_id(entry.get("id")):
            raise DatasetError(
                f"{where}: categories[{index}] has id {_id_problem(entry.get('id'))}"
            )
        name = entry.get("name")
        if name is not None and not isinstance(name, str | int | float):
            raise DatasetError(
                f"{where}: category {entry['id']} has name {_show(name)}; expected a string"
            )


def _parse_images(
    entries: list[Any], problems: _Problems
) -> dict[int, tuple[str, int | None, int | None]]:
    """``{id: (file_name, width or None, height or None)}`` of the well-formed entries."""
    images: dict[int, tuple[str, int | None, int | None]] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            problems.add("malformed entries", f"images[{index}] is not an object")
            continue
        image_id, file_name = entry.get("id"), entry.get("file_name")
        if not _is_id(image_id):
            problems.add("malformed entries", f"images[{index}] has id {_id_problem(image_id)}")
            continue
        if image_id in images:
            problems.add("malformed entries", f"image id {image_id} appears twice")
            continue
        if not isinstance(file_name, str) or not file_name:
            problems.add("malformed entries", f"image {image_id} has file_name {_show(file_name)}")
            continue
        # Some tools write 640.0: an integral float is a size; 640.5 is not.
        sizes = [
            int(s) if isinstance(s, float) and s.is_integer() else s
            for s in (entry.get("width"), entry.get("height"))
        ]
        if any(s is not None and not (_is_int(s) and 0 < s <= _MAX_ID) for s in sizes):
            problems.add(
                "malformed entries",
                f"image {image_id} has width/height {_show(sizes[0])}x{_show(sizes[1])}; "
                "expected positive integers",
            )
            continue
        images[image_id] = (file_name, sizes[0], sizes[1])
    return images


def _probe(storage: LocalStorage | S3Storage, path: str) -> tuple[int, int] | str:
    """The oriented size of a file, or why it cannot be read."""
    try:
        return probe_image(storage.read_bytes(path), source=storage.url(path))
    except (StorageError, ImageDecodeError) as error:
        return str(error)


def _exists(storage: LocalStorage | S3Storage, path: str) -> bool:
    """Whether a file is there; a name the OS refuses (too long, NUL byte) is not there."""
    try:
        return storage.exists(path)
    except (OSError, ValueError):
        return False


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _check_files(
    storage: LocalStorage | S3Storage,
    parsed: Mapping[int, tuple[str, int | None, int | None]],
    image_dir: str,
    problems: _Problems,
    *,
    progress: bool,
    workers: int | None,
    decode_images: bool,
    cache_dir: str | Path | None,
) -> tuple[dict[int, _Image], int]:
    """Check each image file exists, decodes and has the declared size; return the good ones.

    With ``decode_images`` every file is decoded as training will decode it (in parallel,
    cached by file fingerprint: see :mod:`training._image_check`), so a truncated file fails
    here and not epochs later; otherwise only the headers are read.
    """
    to_probe: list[tuple[int, str]] = []
    for image_id, (file_name, _, _) in parsed.items():
        if _escapes_root(file_name):
            problems.add(
                "file_name values escaping the dataset root",
                f"image {image_id}: {_show(file_name)}",
            )
            continue
        path = _join(image_dir, file_name)
        if not _exists(storage, path):
            problems.add("missing image files", _short(storage.url(path)))
            continue
        to_probe.append((image_id, path))

    if decode_images:
        found, _ = verify_images(
            storage, to_probe, workers=workers, progress=progress, cache_dir=cache_dir
        )
        results = [found[image_id] for image_id, _ in to_probe]
    else:
        results = _probe_all(storage, to_probe, progress=progress, workers=workers)

    images: dict[int, _Image] = {}
    sizes_from_files = 0
    for (image_id, path), result in zip(to_probe, results, strict=True):
        if isinstance(result, str):
            problems.add("unreadable image files", result)
            continue
        file_name, declared_w, declared_h = parsed[image_id]
        width, height = result
        if declared_w is None or declared_h is None:
            sizes_from_files += 1
        elif (declared_w, declared_h) != (width, height):
            hint = (
                " (it matches the stored size before EXIF orientation: boxes must refer "
                "to the oriented image, as annotation tools show it)"
                if (declared_w, declared_h) == (height, width)
                else ""
            )
            problems.add(
                "images whose declared size differs from the file",
                f"{storage.url(path)} is declared {declared_w}x{declared_h} but is "
                f"{width}x{height}{hint}",
            )
            continue
        images[image_id] = _Image(image_id, file_name, path, width, height)
    return images, sizes_from_files


def _probe_all(
    storage: LocalStorage | S3Storage,
    items: Sequence[tuple[int, str]],
    *,
    progress: bool,
    workers: int | None,
) -> list[tuple[int, int] | str]:
    """Header sizes only (threads hide S3 latency): the quick check without decoding."""
    from tqdm import tqdm

    with ThreadPoolExecutor(max_workers=max(1, workers or default_workers())) as pool:
        return list(
            tqdm(
                pool.map(lambda item: _probe(storage, item[1]), items),
                total=len(items),
                desc="checking images",
                unit="img",
                disable=not progress,
                leave=False,
            )
        )


@dataclass
class _Counts:
    clamped: int = 0
    empty: int = 0
    outside: int = 0
    crowd: int = 0
    missing_iscrowd: int = 0
    missing_segmentation: int = 0
    missing_area: int = 0
    assigned_ids: int = 0


def _annotation_ids(entries: list[Any], problems: _Problems) -> set[int]:
    """The annotation ids in use; an id used twice is a fatal problem naming both places.

    pycocotools indexes annotations by id, so the last one with an id silently replaces the
    others: COCO evaluation would lose ground-truth boxes and skew AP (and the choice of
    ``best.pt``). Re-numbering would hide a broken export from the user; refusing names it.
    """
    places: dict[int, list[int]] = {}
    for index, entry in enumerate(entries):
        if isinstance(entry, dict) and _is_id(entry.get("id")):
            places.setdefault(entry["id"], []).append(index)
    for ann_id, indices in places.items():
        if len(indices) > 1:
            shown = ", ".join(f"annotations[{i}]" for i in indices[:4])
            more = f" and {len(indices) - 4} more" if len(indices) > 4 else ""
            problems.add("duplicate annotation ids", f"id {ann_id} at {shown}{more}")
    return set(places)


def _check_annotations(
    entries: list[Any],
    categories: CategoryMap,
    parsed_images: Mapping[int, Any],
    images: Mapping[int, _Image],
    problems: _Problems,
) -> tuple[dict[int, list[tuple[list[float], int]]], dict[int, list[dict[str, Any]]], _Counts]:
    """Validate, clamp and sort annotations into training boxes and evaluation ground truth."""
    counts = _Counts()
    known_ids = set(categories.dataset_ids)
    used_ids = _annotation_ids(entries, problems)
    next_id = max(used_ids, default=0) + 1
    training: dict[int, list[tuple[list[float], int]]] = {}
    ground_truth: dict[int, list[dict[str, Any]]] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            problems.add("malformed entries", f"annotations[{index}] is not an object")
            continue
        ann_id = entry.get("id")
        name = f"annotation {ann_id}" if _is_id(ann_id) else f"annotations[{index}]"
        if ann_id is not None and not _is_id(ann_id):
            problems.add("malformed entries", f"annotations[{index}] has id {_id_problem(ann_id)}")
            continue
        image_id, category_id, bbox = (
            entry.get("image_id"),
            entry.get("category_id"),
            entry.get("bbox"),
        )
        if not _is_int(image_id) or image_id not in parsed_images:
            problems.add("annotations of unknown images", f"{name} (image_id {_show(image_id)})")
            continue
        if not _is_int(category_id) or category_id not in known_ids:
            problems.add(
                "annotations with an unknown category_id",
                f"{name} (category_id {_show(category_id)}; known: "
                f"{', '.join(map(str, categories.dataset_ids))})",
            )
            continue
        if not (isinstance(bbox, list | tuple) and len(bbox) == 4 and all(map(_is_number, bbox))):
            problems.add(
                "malformed entries", f"{name} has bbox {_show(bbox)}; expected [x, y, w, h]"
            )
            continue
        iscrowd = entry.get("iscrowd")
        if iscrowd is None:
            counts.missing_iscrowd += 1
            iscrowd = 0
        elif iscrowd not in (0, 1):  # True/False compare equal to 1/0 and are accepted
            problems.add(
                "malformed entries", f"{name} has iscrowd {_show(iscrowd)}; expected 0 or 1"
            )
            continue
        counts.missing_segmentation += "segmentation" not in entry
        if image_id not in images:
            continue  # its file is missing or broken: already a fatal problem
        image = images[image_id]

        x, y, w, h = (float(v) for v in bbox)
        if w <= 0 or h <= 0:
            counts.empty += 1
            continue
        x1, y1 = min(max(x, 0.0), image.width), min(max(y, 0.0), image.height)
        x2, y2 = min(max(x + w, 0.0), image.width), min(max(y + h, 0.0), image.height)
        if x2 <= x1 or y2 <= y1:
            counts.outside += 1
            continue
        if (x1, y1, x2, y2) != (x, y, x + w, y + h):
            counts.clamped += 1

        if _is_id(ann_id):
            annotation_id = ann_id
        else:
            annotation_id, next_id = next_id, next_id + 1
            counts.assigned_ids += 1
        area = entry.get("area")
        if not _is_number(area):
            counts.missing_area += "area" not in entry
            area = (x2 - x1) * (y2 - y1)
        ground_truth.setdefault(image_id, []).append(
            {
                "id": annotation_id,
                "image_id": image_id,
                "category_id": category_id,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": float(area),
                "iscrowd": int(iscrowd),
            }
        )
        if iscrowd:
            counts.crowd += 1
            continue
        training.setdefault(image_id, []).append(
            ([x1, y1, x2, y2], categories.to_label(category_id))
        )
    return training, ground_truth, counts


def _fingerprint(annotations: bytes, file_names: Iterable[str]) -> str:
    digest = hashlib.sha256()
    digest.update(hashlib.sha256(annotations).digest())
    for name in sorted(file_names):
        digest.update(name.encode("utf-8") + b"\n")
    return digest.hexdigest()


def load_dataset(
    source: str | os.PathLike[str],
    *,
    s3_endpoint_url: str | None = None,
    cache_dir: str | Path | None = None,
    images_dir: str | None = None,
    progress: bool = False,
    workers: int | None = None,
    decode_images: bool = True,
) -> CocoDataset:
    """Load and check a COCO dataset.

    Args:
        source: a dataset folder, a COCO ``.json`` file, or the same on ``s3://bucket/prefix``.
        s3_endpoint_url: endpoint of an S3-compatible store (MinIO); default: the AWS chain.
        cache_dir: local cache of S3 objects and of the image check's results (default
            ``$DETSTACK_CACHE_DIR`` or ``~/.cache/detstack``).
        images_dir: folder of the images relative to the root, when not found automatically.
        progress: show a progress bar while checking the images.
        workers: threads decoding (or reading) the images; default: the CPU count.
        decode_images: decode every image, as training will (cached: a rerun decodes only
            new or changed files); ``False`` reads only the headers, which misses truncated
            files.

    Returns:
        The checked dataset.

    Raises:
        DatasetCheckError: the checks found fatal problems (all of them are in the message and
            in ``error.report``).
        DatasetError: no annotations file, or one that is not COCO.
        StorageError: the folder or bucket cannot be read.
    """
    source = os.fspath(source)
    if source.endswith(".json"):
        root, annotations_file = _split_json_source(source)
    else:
        root, annotations_file = source, ""
    storage = open_storage(root, endpoint_url=s3_endpoint_url, cache_dir=cache_dir)
    if not annotations_file:
        annotations_file = _find_annotations(storage)
    where = storage.url(annotations_file)
    try:
        raw = storage.read_bytes(annotations_file)
    except StorageError as error:
        raise DatasetError(f"cannot read the annotations: {error}") from None
    document = _parse_document(raw, where)
    categories = CategoryMap.from_coco(document["categories"])

    problems = _Problems()
    parsed = _parse_images(document["images"], problems)
    names = [name for name, _, _ in parsed.values()]
    image_dir = (
        images_dir.strip("/")
        if images_dir is not None
        else _choose_image_dir(
            storage, annotations_file, [n for n in names if not _escapes_root(n)]
        )
    )
    images, sizes_from_files = _check_files(
        storage,
        parsed,
        image_dir,
        problems,
        progress=progress,
        workers=workers,
        decode_images=decode_images,
        cache_dir=cache_dir,
    )
    training, ground_truth, counts = _check_annotations(
        document["annotations"], categories, parsed, images, problems
    )
    if not any(training.values()) and not problems.items:
        problems.add(
            "usable training boxes (nothing left to train on)",
            f"{len(document['annotations'])} annotations, {counts.crowd} crowd, "
            f"{counts.empty + counts.outside} dropped",
        )

    targets = {}
    per_category = {cid: [0, set()] for cid in categories.dataset_ids}
    for image_id in images:
        boxes = training.get(image_id, [])
        targets[image_id] = (
            np.array([b for b, _ in boxes], dtype=np.float32).reshape(-1, 4),
            np.array([label for _, label in boxes], dtype=np.int64),
        )
        for _, label in boxes:
            entry = per_category[categories.to_dataset_id(label)]
            entry[0] += 1
            entry[1].add(image_id)

    report = DatasetReport(
        source=storage.location,
        annotations_file=annotations_file,
        images=len(document["images"]),
        annotations=len(document["annotations"]),
        categories=tuple(
            CategoryCount(cid, name, label, per_category[cid][0], len(per_category[cid][1]))
            for label, (cid, name) in enumerate(
                zip(categories.dataset_ids, categories.names, strict=True), start=1
            )
        ),
        training_boxes=sum(len(b) for b in training.values()),
        negative_images=sum(1 for i in images if not training.get(i)),
        crowd_annotations=counts.crowd,
        clamped_boxes=counts.clamped,
        dropped_empty_boxes=counts.empty,
        dropped_outside_boxes=counts.outside,
        missing_iscrowd=counts.missing_iscrowd,
        missing_segmentation=counts.missing_segmentation,
        missing_area=counts.missing_area,
        assigned_annotation_ids=counts.assigned_ids,
        sizes_from_files=sizes_from_files,
        categories_without_boxes=sum(1 for count, _ in per_category.values() if count == 0),
        unknown_category_annotations=problems.count("annotations with an unknown category_id"),
        unknown_image_annotations=problems.count("annotations of unknown images"),
        duplicate_annotation_ids=problems.count("duplicate annotation ids"),
        malformed_entries=problems.count("malformed entries"),
        escaping_file_names=problems.count("file_name values escaping the dataset root"),
        missing_files=problems.count("missing image files"),
        unreadable_files=problems.count("unreadable image files"),
        size_mismatches=problems.count("images whose declared size differs from the file"),
        fingerprint=_fingerprint(raw, (i.path for i in images.values())),
        errors=problems.lines(),
    )
    if not report.usable:
        raise DatasetCheckError(report)
    for category in report.categories:
        if category.annotations == 0:
            logger.warning(
                "category %s (id %d) has no training boxes: the model will never learn it",
                category.name,
                category.dataset_id,
            )
    logger.info(
        "dataset %s: %d images (%d negatives), %d training boxes, %d categories",
        report.source,
        len(images),
        report.negative_images,
        report.training_boxes,
        len(categories.dataset_ids),
    )
    return CocoDataset(
        storage=storage,
        source=storage.location,
        annotations_file=annotations_file,
        categories=categories,
        images=images,
        targets=targets,
        ground_truth=ground_truth,
        report=report,
    )


# --------------------------------------------------------------------------- report


def format_report(report: DatasetReport) -> str:
    """The report as the aligned plain-text table the CLI prints."""
    lines = [
        f"dataset      {report.source}",
        f"annotations  {report.annotations_file}",
        f"fingerprint  {report.fingerprint[:16] or '-'}",
        "",
        f"{'images':<38}{report.images:>8}",
        f"{'  negatives (no training boxes)':<38}{report.negative_images:>8}",
        f"{'annotations':<38}{report.annotations:>8}",
        f"{'  training boxes':<38}{report.training_boxes:>8}",
        f"{'  crowd (evaluation only)':<38}{report.crowd_annotations:>8}",
        "",
        f"{'id':>6}  {'label':>5}  {'name':<20}{'boxes':>8}{'images':>8}",
    ]
    for c in report.categories:
        lines.append(
            f"{c.dataset_id:>6}  {c.label:>5}  {c.name[:20]:<20}{c.annotations:>8}{c.images:>8}"
        )
    fixed = [
        ("boxes clamped to the image", report.clamped_boxes),
        ("boxes dropped: zero/negative size", report.dropped_empty_boxes),
        ("boxes dropped: outside the image", report.dropped_outside_boxes),
        ("missing iscrowd (taken as 0)", report.missing_iscrowd),
        ("missing segmentation", report.missing_segmentation),
        ("missing area (box area used)", report.missing_area),
        ("annotation ids assigned", report.assigned_annotation_ids),
        ("image sizes taken from files", report.sizes_from_files),
        ("categories without training boxes", report.categories_without_boxes),
    ]
    fatal = [
        ("unknown category_id", report.unknown_category_annotations),
        ("unknown image_id", report.unknown_image_annotations),
        ("duplicate annotation id", report.duplicate_annotation_ids),
        ("malformed entries", report.malformed_entries),
        ("file_name escaping the root", report.escaping_file_names),
        ("missing image files", report.missing_files),
        ("unreadable image files", report.unreadable_files),
        ("declared size != file size", report.size_mismatches),
    ]
    lines += ["", "handled (counted, training goes on)"]
    lines += [f"  {name:<36}{count:>8}" for name, count in fixed]
    lines += ["", "fatal (training refused)"]
    lines += [f"  {name:<36}{count:>8}" for name, count in fatal]
    lines += ["", "status       " + ("usable" if report.usable else "NOT usable")]
    return "\n".join(lines)
