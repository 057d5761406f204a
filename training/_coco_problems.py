"""The kinds of problem a COCO dataset check finds, and the tally a check keeps of them.

Each kind is one :class:`Problem` member carrying everything the rest of the code needs: its key
in :class:`~training._coco_report.DatasetReport` (an attribute and a JSON key), its label in the
printed report, whether it refuses the dataset, and how an error line calls its items. The
report, its JSON and the error message are all derived from the members, so a new check is one
member plus the code that detects it and calls :meth:`Findings.add`.

Example:
    >>> findings = Findings()
    >>> findings.add(Problem.MISSING_FILE, "data/images/2.png")
    >>> findings.add(Problem.CLAMPED_BOX)
    >>> findings.error_lines()
    ('1 missing image files: data/images/2.png',)
    >>> findings.count(Problem.CLAMPED_BOX), findings.has_fatal
    (1, True)
"""

from __future__ import annotations

import enum
from collections import Counter

__all__ = ["Findings", "Problem"]

#: How many offending items an error line names before saying "and N more".
NAMED_ITEMS = 10


class Problem(enum.Enum):
    """What a dataset check can find; the order is the order of the report's tables.

    Attributes:
        key: the count's name in the report (``report.<key>``, and the JSON key).
        label: the row of the printed report.
        fatal: whether the dataset is refused (``False``: handled, counted, training goes on).
        noun: what an error line calls the items ("3 missing image files: a; b; c").
    """

    # Handled: a careful user would fix these by hand; the loader does and counts them.
    CLAMPED_BOX = ("clamped_boxes", "boxes clamped to the image", False)
    EMPTY_BOX = ("dropped_empty_boxes", "boxes dropped: zero/negative size", False)
    OUTSIDE_BOX = ("dropped_outside_boxes", "boxes dropped: outside the image", False)
    MISSING_ISCROWD = ("missing_iscrowd", "missing iscrowd (taken as 0)", False)
    MISSING_SEGMENTATION = ("missing_segmentation", "missing segmentation", False)
    MISSING_AREA = ("missing_area", "missing area (box area used)", False)
    ASSIGNED_ANNOTATION_ID = ("assigned_annotation_ids", "annotation ids assigned", False)
    SIZE_FROM_FILE = ("sizes_from_files", "image sizes taken from files", False)
    CATEGORY_WITHOUT_BOXES = (
        "categories_without_boxes",
        "categories without training boxes",
        False,
    )
    # Fatal: all of them are collected, then the dataset is refused once, naming the items.
    UNKNOWN_CATEGORY = (
        "unknown_category_annotations",
        "unknown category_id",
        True,
        "annotations with an unknown category_id",
    )
    UNKNOWN_IMAGE = (
        "unknown_image_annotations",
        "unknown image_id",
        True,
        "annotations of unknown images",
    )
    DUPLICATE_ANNOTATION_ID = (
        "duplicate_annotation_ids",
        "duplicate annotation id",
        True,
        "duplicate annotation ids",
    )
    MALFORMED_ENTRY = ("malformed_entries", "malformed entries", True)
    ESCAPING_FILE_NAME = (
        "escaping_file_names",
        "file_name escaping the root",
        True,
        "file_name values escaping the dataset root",
    )
    MISSING_FILE = ("missing_files", "missing image files", True)
    UNREADABLE_FILE = ("unreadable_files", "unreadable image files", True)
    SIZE_MISMATCH = (
        "size_mismatches",
        "declared size != file size",
        True,
        "images whose declared size differs from the file",
    )
    NO_TRAINING_BOXES = (
        "no_training_boxes",
        "nothing left to train on",
        True,
        "usable training boxes (nothing left to train on)",
    )

    def __init__(self, key: str, label: str, fatal: bool, noun: str = "") -> None:
        self.key = key
        self.label = label
        self.fatal = fatal
        self.noun = noun or label

    @classmethod
    def handled(cls) -> tuple[Problem, ...]:
        """The members that are counted while training goes on, in report order."""
        return tuple(p for p in cls if not p.fatal)

    @classmethod
    def refusing(cls) -> tuple[Problem, ...]:
        """The fatal members, in report order."""
        return tuple(p for p in cls if p.fatal)


class Findings:
    """What one check found: a count per :class:`Problem`, and the items of the fatal ones.

    Items of handled problems are not kept: a large dataset can have a million annotations
    without a segmentation, and only their number is reported.
    """

    def __init__(self) -> None:
        self._counts: Counter[Problem] = Counter()
        self._items: dict[Problem, list[str]] = {}  # fatal ones, in the order first found

    def add(self, problem: Problem, item: str = "") -> None:
        """Count one occurrence; ``item`` names it (what the error line shows, fatal only)."""
        self._counts[problem] += 1
        if problem.fatal:
            self._items.setdefault(problem, []).append(item)

    def count(self, problem: Problem) -> int:
        return self._counts[problem]

    def counts(self) -> dict[Problem, int]:
        """Every member's count (0 included), in report order."""
        return {problem: self._counts[problem] for problem in Problem}

    @property
    def has_fatal(self) -> bool:
        """Whether the dataset must be refused."""
        return bool(self._items)

    def error_lines(self) -> tuple[str, ...]:
        """One line per fatal problem found, naming its first items, in the order found."""
        lines = []
        for problem, items in self._items.items():
            named = "; ".join(items[:NAMED_ITEMS])
            more = f" (and {len(items) - NAMED_ITEMS} more)" if len(items) > NAMED_ITEMS else ""
            lines.append(f"{len(items)} {problem.noun}: {named}{more}")
        return tuple(lines)
