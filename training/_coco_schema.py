"""Check that an annotations file is COCO, entry by entry, before anything trusts a value in it.

Two kinds of failure, because a user fixes them differently:

* the file itself is not COCO (not UTF-8 or JSON, nested too deeply, a number too long to
  parse, no ``images``/``categories`` lists, a category that is not an object with an id):
  :func:`parse_document` raises one :class:`~detstack.errors.DatasetError` naming the place;
* single entries are wrong (an id that is not an integer in 0..2**63-1, the int64 of training's
  tensors; an unknown ``image_id`` or ``category_id``; a bbox that is not four finite numbers;
  an annotation id used twice): :func:`parse_images`, :func:`check_annotation_ids` and
  :func:`valid_annotations` add each to the :class:`~training._coco_problems.Findings` and skip
  the entry, so every problem is reported at once.

The checks are written by hand, not with a JSON Schema: they bound what a hostile file can cost
(no ``repr`` of a 100 MB string, integers beyond int64 named, not converted) and each message
names the entry the way a user finds it (``images[3] has id '1'``, ``annotation 41``).

Example:
    >>> document = parse_document(raw, "data/annotations.json")          # doctest: +SKIP
    >>> images = parse_images(document["images"], findings)             # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import re
import reprlib
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from detstack.errors import DatasetError
from training._coco_problems import Findings, Problem
from training.categories import CategoryMap

__all__ = [
    "Annotation",
    "DeclaredImage",
    "check_annotation_ids",
    "is_id",
    "is_number",
    "parse_document",
    "parse_images",
    "show",
    "valid_annotations",
]

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
class DeclaredImage:
    """An image entry as the annotations declare it; a size is ``None`` when not given."""

    file_name: str
    width: int | None
    height: int | None


@dataclass(frozen=True)
class Annotation:
    """A well-formed annotation entry (its box not yet clamped to the image)."""

    id: int | None  # None: not given, one is assigned
    image_id: int
    category_id: int
    bbox: tuple[float, float, float, float]  # x, y, w, h as written
    iscrowd: int
    area: float | None  # None: missing or not a finite number
    has_area: bool  # whether the entry has an "area" key at all


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_id(value: Any) -> bool:
    """Ids are integers 0..2**63-1: a larger one overflows the int64 tensors of training."""
    return _is_int(value) and 0 <= value <= _MAX_ID


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool, not an integer too large for a float)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float (JSON has no size limit)
        return False


def show(value: Any) -> str:
    """A bounded ``repr`` for messages: hostile files hold huge strings and deep nesting."""
    try:
        return _SHORT.repr(value)
    except (RecursionError, ValueError):
        return f"<{type(value).__name__}>"


def _id_problem(value: Any) -> str:
    """What is wrong with an id, naming the value (``2**70`` is spelt out, then explained)."""
    if not _is_int(value):
        return f"{show(value)} (type {type(value).__name__}); expected an integer"
    return f"{show(value)}; expected an integer in 0..2**63-1 (int64)"


# --------------------------------------------------------------------------- the file


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


def parse_document(data: bytes, where: str) -> dict[str, Any]:
    """The COCO document in ``data``, with ``images``, ``annotations`` and ``categories`` lists.

    Raises:
        DatasetError: the file is not a COCO document (naming the place where one can).
    """
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
                f"{where}: categories[{index}] is {show(entry)} (type {type(entry).__name__}); "
                "expected an object with 'id' and 'name'"
            )
        if not is_id(entry.get("id")):
            raise DatasetError(
                f"{where}: categories[{index}] has id {_id_problem(entry.get('id'))}"
            )
        name = entry.get("name")
        if name is not None and not isinstance(name, str | int | float):
            raise DatasetError(
                f"{where}: category {entry['id']} has name {show(name)}; expected a string"
            )


# --------------------------------------------------------------------------- entries


def parse_images(entries: list[Any], findings: Findings) -> dict[int, DeclaredImage]:
    """``{id: declared image}`` of the well-formed entries; the others are findings."""
    images: dict[int, DeclaredImage] = {}
    malformed = Problem.MALFORMED_ENTRY
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            findings.add(malformed, f"images[{index}] is not an object")
            continue
        image_id, file_name = entry.get("id"), entry.get("file_name")
        if not is_id(image_id):
            findings.add(malformed, f"images[{index}] has id {_id_problem(image_id)}")
            continue
        if image_id in images:
            findings.add(malformed, f"image id {image_id} appears twice")
            continue
        if not isinstance(file_name, str) or not file_name:
            findings.add(malformed, f"image {image_id} has file_name {show(file_name)}")
            continue
        # Some tools write 640.0: an integral float is a size; 640.5 is not.
        sizes = [
            int(s) if isinstance(s, float) and s.is_integer() else s
            for s in (entry.get("width"), entry.get("height"))
        ]
        if any(s is not None and not (_is_int(s) and 0 < s <= _MAX_ID) for s in sizes):
            findings.add(
                malformed,
                f"image {image_id} has width/height {show(sizes[0])}x{show(sizes[1])}; "
                "expected positive integers",
            )
            continue
        images[image_id] = DeclaredImage(file_name, sizes[0], sizes[1])
    return images


def check_annotation_ids(entries: list[Any], findings: Findings) -> set[int]:
    """The annotation ids in use; an id used twice is a fatal finding naming every place.

    pycocotools indexes annotations by id, so the last one with an id silently replaces the
    others: COCO evaluation would lose ground-truth boxes and skew AP (and the choice of
    ``best.pt``). Re-numbering would hide a broken export from the user; refusing names it.
    """
    places: dict[int, list[int]] = {}
    for index, entry in enumerate(entries):
        if isinstance(entry, dict) and is_id(entry.get("id")):
            places.setdefault(entry["id"], []).append(index)
    for ann_id, indices in places.items():
        if len(indices) > 1:
            shown = ", ".join(f"annotations[{i}]" for i in indices[:4])
            more = f" and {len(indices) - 4} more" if len(indices) > 4 else ""
            findings.add(Problem.DUPLICATE_ANNOTATION_ID, f"id {ann_id} at {shown}{more}")
    return set(places)


def valid_annotations(
    entries: list[Any],
    categories: CategoryMap,
    images: Mapping[int, DeclaredImage],
    findings: Findings,
) -> Iterator[Annotation]:
    """The well-formed annotations, one at a time; the others are findings.

    A generator, so a large file is not held twice in memory. Missing ``iscrowd`` (taken as
    0) and missing ``segmentation`` are counted here, for every well-formed entry.
    """
    known_ids = set(categories.dataset_ids)
    malformed = Problem.MALFORMED_ENTRY
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            findings.add(malformed, f"annotations[{index}] is not an object")
            continue
        ann_id = entry.get("id")
        name = f"annotation {ann_id}" if is_id(ann_id) else f"annotations[{index}]"
        if ann_id is not None and not is_id(ann_id):
            findings.add(malformed, f"annotations[{index}] has id {_id_problem(ann_id)}")
            continue
        image_id, category_id, bbox = (
            entry.get("image_id"),
            entry.get("category_id"),
            entry.get("bbox"),
        )
        if not _is_int(image_id) or image_id not in images:
            findings.add(Problem.UNKNOWN_IMAGE, f"{name} (image_id {show(image_id)})")
            continue
        if not _is_int(category_id) or category_id not in known_ids:
            findings.add(
                Problem.UNKNOWN_CATEGORY,
                f"{name} (category_id {show(category_id)}; known: "
                f"{', '.join(map(str, categories.dataset_ids))})",
            )
            continue
        if not (isinstance(bbox, list | tuple) and len(bbox) == 4 and all(map(is_number, bbox))):
            findings.add(malformed, f"{name} has bbox {show(bbox)}; expected [x, y, w, h]")
            continue
        iscrowd = entry.get("iscrowd")
        if iscrowd is None:
            findings.add(Problem.MISSING_ISCROWD)
            iscrowd = 0
        elif iscrowd not in (0, 1):  # True/False compare equal to 1/0 and are accepted
            findings.add(malformed, f"{name} has iscrowd {show(iscrowd)}; expected 0 or 1")
            continue
        if "segmentation" not in entry:
            findings.add(Problem.MISSING_SEGMENTATION)
        area = entry.get("area")
        x, y, w, h = (float(v) for v in bbox)
        yield Annotation(
            id=ann_id,
            image_id=image_id,
            category_id=category_id,
            bbox=(x, y, w, h),
            iscrowd=int(iscrowd),
            area=float(area) if is_number(area) else None,
            has_area="area" in entry,
        )
