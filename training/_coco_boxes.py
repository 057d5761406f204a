"""Turn well-formed annotations into training boxes and evaluation ground truth.

Policies (what a careful user would do by hand, each counted as a
:class:`~training._coco_problems.Problem`):

* a box reaching outside its image is clamped to it; a box with zero or negative width or
  height (before or after clamping) is dropped;
* ``iscrowd=1`` annotations are not training targets but stay in the evaluation ground truth
  (COCOeval ignores detections matching them);
* a missing ``area`` is the clamped box area; a missing annotation ``id`` is assigned above
  every id in use;
* a dataset left with no training box at all is refused: there is nothing to learn from.

Example:
    >>> boxes = clean_boxes(annotations, images, categories, findings, used_ids)  # doctest: +SKIP
    >>> boxes.training[1]                                                       # doctest: +SKIP
    [([0.0, 20.0, 15.0, 30.0], 2)]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from training._coco_probe import CheckedImage
from training._coco_problems import Findings, Problem
from training._coco_schema import Annotation
from training.categories import CategoryMap

__all__ = ["Boxes", "clean_boxes", "require_training_boxes", "targets"]


@dataclass
class Boxes:
    """The cleaned annotations, per image id."""

    #: ``[([x1, y1, x2, y2], label 1..K), ...]``: crowd and dropped boxes left out.
    training: dict[int, list[tuple[list[float], int]]] = field(default_factory=dict)
    #: COCO annotation dicts (xywh, clamped) for ``pycocotools``: crowd ones kept.
    ground_truth: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    crowd: int = 0
    dropped: int = 0


def clean_boxes(
    annotations: Iterable[Annotation],
    images: Mapping[int, CheckedImage],
    categories: CategoryMap,
    findings: Findings,
    used_ids: set[int],
) -> Boxes:
    """Clamp, drop and sort the annotations of the checked images; count what was fixed.

    Annotations of images not in ``images`` (a missing or broken file, already a fatal finding)
    are skipped. ``used_ids`` are the annotation ids in the file: assigned ids come after them.
    """
    boxes = Boxes()
    next_id = max(used_ids, default=0) + 1
    for annotation in annotations:
        image = images.get(annotation.image_id)
        if image is None:
            continue
        x, y, w, h = annotation.bbox
        if w <= 0 or h <= 0:
            findings.add(Problem.EMPTY_BOX)
            boxes.dropped += 1
            continue
        x1, y1 = min(max(x, 0.0), image.width), min(max(y, 0.0), image.height)
        x2, y2 = min(max(x + w, 0.0), image.width), min(max(y + h, 0.0), image.height)
        if x2 <= x1 or y2 <= y1:
            findings.add(Problem.OUTSIDE_BOX)
            boxes.dropped += 1
            continue
        if (x1, y1, x2, y2) != (x, y, x + w, y + h):
            findings.add(Problem.CLAMPED_BOX)

        if annotation.id is not None:
            annotation_id = annotation.id
        else:
            annotation_id, next_id = next_id, next_id + 1
            findings.add(Problem.ASSIGNED_ANNOTATION_ID)
        area = annotation.area
        if area is None:
            if not annotation.has_area:
                findings.add(Problem.MISSING_AREA)
            area = (x2 - x1) * (y2 - y1)
        boxes.ground_truth.setdefault(image.id, []).append(
            {
                "id": annotation_id,
                "image_id": image.id,
                "category_id": annotation.category_id,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": float(area),
                "iscrowd": annotation.iscrowd,
            }
        )
        if annotation.iscrowd:
            boxes.crowd += 1
            continue
        boxes.training.setdefault(image.id, []).append(
            ([x1, y1, x2, y2], categories.to_label(annotation.category_id))
        )
    return boxes


def require_training_boxes(boxes: Boxes, annotations: int, findings: Findings) -> None:
    """Refuse a dataset left without any training box, unless it is refused already."""
    if not any(boxes.training.values()) and not findings.has_fatal:
        findings.add(
            Problem.NO_TRAINING_BOXES,
            f"{annotations} annotations, {boxes.crowd} crowd, {boxes.dropped} dropped",
        )


def targets(
    images: Iterable[int], training: Mapping[int, list[tuple[list[float], int]]]
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """``{image id: (boxes float32 (N, 4) xyxy, labels int64 (N,))}``; N = 0 for negatives."""
    result = {}
    for image_id in images:
        image_boxes = training.get(image_id, [])
        result[image_id] = (
            np.array([b for b, _ in image_boxes], dtype=np.float32).reshape(-1, 4),
            np.array([label for _, label in image_boxes], dtype=np.int64),
        )
    return result
