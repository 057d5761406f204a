"""The dataset report: what :func:`training.coco.load_dataset` found, as data and as a table.

:class:`DatasetReport` holds the dataset's sizes, one :class:`CategoryCount` per category and a
count per :class:`~training._coco_problems.Problem`. Each problem's count is also an attribute
named by its key (``report.missing_files``) and a key of :meth:`DatasetReport.to_dict`, and a
row of :func:`format_report`: all derived from the enum, so a new problem kind shows up in all
three without an edit here.

Example:
    >>> report = DatasetReport(source="data/shapes", annotations_file="annotations.json")
    >>> report.usable, report.missing_files
    (True, 0)
    >>> print(format_report(report))                                   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from detstack.errors import DatasetError
from training._coco_problems import Problem
from training.categories import CategoryMap

__all__ = ["CategoryCount", "DatasetCheckError", "DatasetReport", "format_report"]


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
    """What :func:`~training.coco.load_dataset` found. Problem counts are 0 for a clean dataset.

    ``errors`` holds one line per fatal problem; the dataset is usable when it is empty. Each
    :class:`~training._coco_problems.Problem` count is read with :meth:`count` or as the
    attribute named by its ``key`` (``report.clamped_boxes``, ``report.missing_files``, ...).
    """

    source: str
    annotations_file: str
    images: int = 0
    annotations: int = 0
    categories: tuple[CategoryCount, ...] = ()
    training_boxes: int = 0
    negative_images: int = 0
    crowd_annotations: int = 0
    problems: Mapping[Problem, int] = field(default_factory=dict, hash=False)
    fingerprint: str = ""
    errors: tuple[str, ...] = ()

    @property
    def usable(self) -> bool:
        return not self.errors

    def count(self, problem: Problem) -> int:
        """How many times ``problem`` was found (0 when never)."""
        return self.problems.get(problem, 0)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (for JSON, checkpoints and run metadata); problems by their keys."""
        return {
            "source": self.source,
            "annotations_file": self.annotations_file,
            "images": self.images,
            "annotations": self.annotations,
            "training_boxes": self.training_boxes,
            "negative_images": self.negative_images,
            "crowd_annotations": self.crowd_annotations,
            **{problem.key: self.count(problem) for problem in Problem},
            "fingerprint": self.fingerprint,
            "errors": list(self.errors),
            "categories": [c.__dict__.copy() for c in self.categories],
            "usable": self.usable,
        }


def _count_attribute(problem: Problem) -> property:
    return property(lambda report: report.count(problem), doc=f"Count of: {problem.label}.")


# ``report.<key>`` for every problem: the names callers and the JSON have always used.
for _problem in Problem:
    if hasattr(DatasetReport, _problem.key):  # pragma: no cover - caught by the tests at once
        raise TypeError(f"Problem.{_problem.name}'s key {_problem.key!r} is a report field")
    setattr(DatasetReport, _problem.key, _count_attribute(_problem))
del _problem


class DatasetCheckError(DatasetError):
    """The dataset failed its checks; ``report`` says everything that was found."""

    def __init__(self, report: DatasetReport) -> None:
        lines = "\n".join(f"  - {line}" for line in report.errors)
        super().__init__(f"dataset {report.source} cannot be used:\n{lines}")
        self.report = report


def category_counts(
    categories: CategoryMap, boxes: Mapping[int, list[tuple[list[float], int]]]
) -> tuple[CategoryCount, ...]:
    """Training boxes and images per category, from ``{image id: [(box, label), ...]}``."""
    annotations = dict.fromkeys(range(1, len(categories.dataset_ids) + 1), 0)
    images: dict[int, set[int]] = {label: set() for label in annotations}
    for image_id, image_boxes in boxes.items():
        for _, label in image_boxes:
            annotations[label] += 1
            images[label].add(image_id)
    return tuple(
        CategoryCount(cid, name, label, annotations[label], len(images[label]))
        for label, (cid, name) in enumerate(
            zip(categories.dataset_ids, categories.names, strict=True), start=1
        )
    )


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
    lines += ["", "handled (counted, training goes on)"]
    lines += [f"  {p.label:<36}{report.count(p):>8}" for p in Problem.handled()]
    lines += ["", "fatal (training refused)"]
    lines += [f"  {p.label:<36}{report.count(p):>8}" for p in Problem.refusing()]
    lines += ["", "status       " + ("usable" if report.usable else "NOT usable")]
    return "\n".join(lines)
