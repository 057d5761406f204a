"""The problem kinds of the COCO check: one enum, from which the report and the errors follow."""

from __future__ import annotations

import json
import re

import pytest

from tests.training._coco_cases import (  # noqa: F401 (the fixture is used by every test)
    CATEGORIES,
    _ann,
    _image,
    _image_check_cache_in_tmp,
    _load,
)
from training._coco_problems import NAMED_ITEMS, Findings
from training.coco import DatasetCheckError, DatasetReport, Problem, format_report

# --------------------------------------------------------------------------- the enum itself


def test_every_problem_has_a_label_a_key_and_a_noun_for_its_error_line():
    for problem in Problem:
        assert problem.label and problem.noun and problem.key.isidentifier()
        assert isinstance(problem.fatal, bool)
        assert len(problem.label) <= 36, f"{problem} does not fit the report's column"
    assert len({p.key for p in Problem}) == len(Problem)
    assert len({p.label for p in Problem}) == len(Problem)
    assert set(Problem.handled()) | set(Problem.refusing()) == set(Problem)
    assert not set(Problem.handled()) & set(Problem.refusing())


def test_the_fatal_problems_are_the_ones_that_refuse_a_dataset():
    assert {p for p in Problem if p.fatal} == {
        Problem.UNKNOWN_CATEGORY,
        Problem.UNKNOWN_IMAGE,
        Problem.DUPLICATE_ANNOTATION_ID,
        Problem.MALFORMED_ENTRY,
        Problem.ESCAPING_FILE_NAME,
        Problem.MISSING_FILE,
        Problem.UNREADABLE_FILE,
        Problem.SIZE_MISMATCH,
        Problem.NO_TRAINING_BOXES,
    }


@pytest.mark.parametrize("problem", Problem.refusing(), ids=lambda p: p.name)
def test_one_fatal_finding_makes_the_report_unusable_naming_the_item(problem):
    findings = Findings()
    findings.add(problem, "the item")
    assert findings.has_fatal
    assert findings.error_lines() == (f"1 {problem.noun}: the item",)
    report = DatasetReport(source="ds", annotations_file="a.json", errors=findings.error_lines())
    assert not report.usable
    assert f"1 {problem.noun}: the item" in str(DatasetCheckError(report))


def test_handled_findings_never_make_the_report_unusable():
    findings = Findings()
    for problem in Problem.handled():
        findings.add(problem)
        findings.add(problem)
    assert not findings.has_fatal and findings.error_lines() == ()
    assert all(findings.count(p) == 2 for p in Problem.handled())


def test_an_error_line_names_the_first_items_and_counts_the_rest():
    findings = Findings()
    for i in range(NAMED_ITEMS + 3):
        findings.add(Problem.MISSING_FILE, f"f{i}")
    findings.add(Problem.UNKNOWN_IMAGE, "annotation 4")
    (missing, unknown) = findings.error_lines()
    assert missing.startswith(f"{NAMED_ITEMS + 3} missing image files: f0; f1;")
    assert missing.endswith(f"f{NAMED_ITEMS - 1} (and 3 more)")
    assert unknown == "1 annotations of unknown images: annotation 4"


def test_the_report_counts_by_member_as_attribute_json_key_and_table_row():
    findings = Findings()
    for n, problem in enumerate(Problem, start=1):
        for _ in range(n):
            findings.add(problem, "x")
    report = DatasetReport(source="ds", annotations_file="a.json", problems=findings.counts())
    data = json.loads(json.dumps(report.to_dict()))
    text = format_report(report)
    for n, problem in enumerate(Problem, start=1):
        assert report.count(problem) == getattr(report, problem.key) == data[problem.key] == n
        assert f"  {problem.label:<36}{n:>8}" in text.splitlines()


def test_a_clean_report_counts_zero_for_every_member():
    report = DatasetReport(source="ds", annotations_file="a.json")
    assert all(report.count(p) == getattr(report, p.key) == 0 for p in Problem)
    assert report.usable and "status       usable" in format_report(report)


# --------------------------------------------------------------------------- each member found


def _good(**extra):
    return _ann(1, 1, [1, 1, 4, 4], **extra)


#: For every member, a dataset that has that problem: ``{member: write_coco keyword arguments}``.
_CASES = {
    Problem.CLAMPED_BOX: {"annotations": [_ann(1, 1, [-5, 20, 20, 20])]},
    Problem.EMPTY_BOX: {"annotations": [_good(), _ann(2, 1, [3, 3, 0, 5])]},
    Problem.OUTSIDE_BOX: {"annotations": [_good(), _ann(2, 1, [50, 5, 10, 10])]},
    Problem.MISSING_ISCROWD: {"annotations": [_good(iscrowd=None)]},
    Problem.MISSING_SEGMENTATION: {"annotations": [_good(segmentation=None)]},
    Problem.MISSING_AREA: {"annotations": [_good(area=None)]},
    Problem.ASSIGNED_ANNOTATION_ID: {"annotations": [_ann(None, 1, [1, 1, 4, 4])]},
    Problem.SIZE_FROM_FILE: {
        "images": [{"id": 1, "file_name": "a.png"}],
        "pixels": {"a.png": (40, 30)},
    },
    Problem.CATEGORY_WITHOUT_BOXES: {},
    Problem.UNKNOWN_CATEGORY: {"annotations": [_good(category_id=6)]},
    Problem.UNKNOWN_IMAGE: {"annotations": [_good(), _ann(2, 77, [1, 1, 4, 4])]},
    Problem.DUPLICATE_ANNOTATION_ID: {"annotations": [_good(), _ann(1, 1, [5, 5, 4, 4])]},
    Problem.MALFORMED_ENTRY: {"annotations": [_good(), _ann(2, 1, [1, 1, 4])]},
    Problem.ESCAPING_FILE_NAME: {
        "images": [_image(1), _image(2, name="../x.png")],
        "pixels": {"../x.png": None},
    },
    Problem.MISSING_FILE: {
        "images": [_image(1), _image(2)],
        "pixels": {"images/2.png": None},
    },
    Problem.UNREADABLE_FILE: {"images": [_image(1), _image(2)], "broken": "images/2.png"},
    Problem.SIZE_MISMATCH: {"pixels": {"images/1.png": (41, 30)}},
    Problem.NO_TRAINING_BOXES: {"annotations": [_good(iscrowd=1)]},
}


def test_every_problem_has_a_dataset_case_below():
    assert set(_CASES) == set(Problem)


@pytest.mark.parametrize("problem", list(Problem), ids=lambda p: p.name)
def test_each_problem_is_found_counted_and_fatal_only_when_its_member_says_so(
    tmp_path, write_coco, problem
):
    case = dict(_CASES[problem])
    broken = case.pop("broken", None)
    case.setdefault("images", [_image(1)])
    case.setdefault("annotations", [_good()])
    root = write_coco(tmp_path / "ds", categories=CATEGORIES, **case)
    if broken:
        (root / broken).write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    if problem.fatal:
        with pytest.raises(DatasetCheckError, match=re.escape(f"1 {problem.noun}: ")) as error:
            _load(root)
        report = error.value.report
        assert not report.usable and len(report.errors) == 1
    else:
        report = _load(root).report
        assert report.usable
    assert report.count(problem) >= 1
    assert report.to_dict()[problem.key] == report.count(problem)
