"""Load a COCO detection dataset from a folder or ``s3://``, check it, and serve its samples.

:func:`load_dataset` reads the annotations, checks every image and annotation before training
starts, and returns a :class:`CocoDataset`: the category map, the image ids, per-image training
targets (numpy), image decoding through :func:`detstack.images.decode_image`, the ground truth
for ``pycocotools`` evaluation, a fingerprint for provenance and a :class:`DatasetReport`.

This module is the public face; each job lives in its own private module:

* :mod:`training._coco_locate`: the layouts accepted (``ROOT/annotations.json``,
  ``ROOT/annotations/<name>.json``, an explicit ``.json``; images in ``ROOT``, ``ROOT/images``,
  ``ROOT/<split>`` or ``images_dir``), in a folder or on ``s3://``;
* :mod:`training._coco_schema`: is the file COCO, is each entry well formed (ids are integers
  in 0..2**63-1, the int64 of training's tensors);
* :mod:`training._coco_probe`: is each image file there, readable (every image is decoded, in
  parallel and cached by file fingerprint, see :mod:`training._image_check`) and of the
  declared, EXIF-*oriented* size (see :mod:`detstack.images`);
* :mod:`training._coco_boxes`: boxes clamped to the image or dropped, crowd annotations kept
  for evaluation only, missing ``area``/``id`` filled in;
* :mod:`training._coco_problems`: the :class:`Problem` kinds, fatal or handled;
* :mod:`training._coco_report`: the :class:`DatasetReport` and :func:`format_report`.

Policies (what a careful user would do by hand, counted in the report): boxes are clamped or
dropped; a missing ``iscrowd`` means 0; a missing ``segmentation`` is fine; a missing ``area`` is
the clamped box area; a missing annotation ``id`` is assigned; a missing image
``width``/``height`` is taken from the file; images without (non-crowd) annotations are kept as
negatives: they teach the detector what background looks like.

Fatal, all reported at once, naming the items (the fatal :class:`Problem` members): unknown
``category_id`` or ``image_id``, malformed entries, annotation ids used twice (pycocotools would
keep only the last, and COCO evaluation would silently lose ground truth), ``file_name``
escaping the root (absolute or ``..``), missing image files, image files that do not decode,
declared ``width``/``height`` differing from the file, nothing left to train on. A file that is
not COCO (not JSON, nested too deeply, a number too long to parse, a category that is not an
object) is a :class:`DatasetError` naming the place.

Example:
    >>> dataset = load_dataset("data/shapes")                       # doctest: +SKIP
    >>> print(format_report(dataset.report))                        # doctest: +SKIP
    >>> dataset.report.count(Problem.CLAMPED_BOX)                   # doctest: +SKIP
    0
    >>> train_ids, val_ids = split_dataset(dataset.image_ids, 0.2, seed=0)  # doctest: +SKIP
    >>> pixels = dataset.read_image(train_ids[0])                   # doctest: +SKIP
    >>> dataset.target(train_ids[0])["boxes"].shape                 # doctest: +SKIP
    (3, 4)
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detstack.errors import DatasetError, StorageError
from detstack.images import decode_image
from training._coco_boxes import clean_boxes, require_training_boxes, targets
from training._coco_locate import image_dir, open_root, read_annotations
from training._coco_probe import CheckedImage, check_files
from training._coco_problems import Findings, Problem
from training._coco_report import (
    CategoryCount,
    DatasetCheckError,
    DatasetReport,
    category_counts,
    format_report,
)
from training._coco_schema import (
    check_annotation_ids,
    parse_document,
    parse_images,
    valid_annotations,
)
from training.categories import CategoryMap
from training.storage import LocalStorage, S3Storage

__all__ = [
    "CategoryCount",
    "CocoDataset",
    "DatasetCheckError",
    "DatasetReport",
    "Problem",
    "format_report",
    "load_dataset",
    "split_dataset",
]

logger = logging.getLogger(__name__)


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
        images: Mapping[int, CheckedImage],
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

    def _image(self, image_id: int) -> CheckedImage:
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
        progress: show progress while checking the images (:mod:`detstack.progress`).
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
    storage, annotations_file = open_root(
        os.fspath(source), endpoint_url=s3_endpoint_url, cache_dir=cache_dir
    )
    raw = read_annotations(storage, annotations_file)
    document = parse_document(raw, storage.url(annotations_file))
    categories = CategoryMap.from_coco(document["categories"])

    findings = Findings()
    declared = parse_images(document["images"], findings)
    folder = image_dir(
        storage,
        annotations_file,
        [image.file_name for image in declared.values()],
        images_dir=images_dir,
    )
    images = check_files(
        storage,
        declared,
        folder,
        findings,
        show_progress=progress,
        workers=workers,
        decode_images=decode_images,
        cache_dir=cache_dir,
    )
    entries = document["annotations"]
    used_ids = check_annotation_ids(entries, findings)
    boxes = clean_boxes(
        valid_annotations(entries, categories, declared, findings),
        images,
        categories,
        findings,
        used_ids,
    )
    require_training_boxes(boxes, len(entries), findings)
    per_category = category_counts(categories, boxes.training)
    for category in per_category:
        if category.annotations == 0:
            findings.add(Problem.CATEGORY_WITHOUT_BOXES)

    report = DatasetReport(
        source=storage.location,
        annotations_file=annotations_file,
        images=len(document["images"]),
        annotations=len(entries),
        categories=per_category,
        training_boxes=sum(len(b) for b in boxes.training.values()),
        negative_images=sum(1 for i in images if not boxes.training.get(i)),
        crowd_annotations=boxes.crowd,
        problems=findings.counts(),
        fingerprint=_fingerprint(raw, (i.path for i in images.values())),
        errors=findings.error_lines(),
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
        targets=targets(images, boxes.training),
        ground_truth=boxes.ground_truth,
        report=report,
    )
