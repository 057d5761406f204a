"""Unit tests of the parity gate's comparison (pure numpy, no model)."""

from __future__ import annotations

import numpy as np
import pytest

from export.validation import (
    Cutoffs,
    Detections,
    ImageCheck,
    ValidationReport,
    compare_detections,
)


def detections(boxes, scores, labels) -> Detections:
    return Detections(
        np.asarray(boxes, np.float32).reshape(-1, 4),
        np.asarray(scores, np.float32),
        np.asarray(labels, np.int64),
    )


REFERENCE = detections(
    [[0, 0, 10, 10], [20, 20, 40, 40], [20, 20, 40, 40]], [0.9, 0.8, 0.8], [0, 3, 7]
)


def test_identical_answers_match_completely():
    matched, min_iou, max_diff, mismatches, _ = compare_detections(REFERENCE, REFERENCE)
    assert (matched, mismatches) == (3, [])
    assert min_iou == pytest.approx(1.0)
    assert max_diff == 0.0


def test_detections_in_another_order_still_match_by_iou_and_label():
    order = [2, 0, 1]
    candidate = detections(REFERENCE.boxes[order], REFERENCE.scores[order], REFERENCE.labels[order])
    matched, _, _, mismatches, _ = compare_detections(REFERENCE, candidate)
    assert (matched, mismatches) == (3, [])


def test_tiny_numeric_differences_within_tolerances_pass():
    candidate = detections(REFERENCE.boxes + 0.001, REFERENCE.scores + 5e-4, REFERENCE.labels)
    assert compare_detections(REFERENCE, candidate)[3] == []


def test_every_kind_of_mismatch_is_reported_at_once():
    candidate = detections(
        [[0, 0, 10, 12], [20, 20, 40, 40], [20, 20, 40, 40], [50, 50, 60, 60]],
        [0.9, 0.7, 0.8, 0.3],
        [0, 3, 3, 7],
    )
    matched, _, _, mismatches, _ = compare_detections(REFERENCE, candidate)
    text = "\n".join(mismatches)
    assert "3 detections in PyTorch but 4 in ONNX" in text
    assert "PyTorch detection 0" in text and "IoU >= 0.99" in text  # box moved: IoU 0.83
    assert "differ in score" in text  # label 3 matched with score 0.7 vs 0.8
    assert "PyTorch detection 2" in text and "no ONNX detection has that label" not in text
    assert "ONNX detection 3" in text
    assert matched == 1


def test_a_different_label_is_a_mismatch_even_for_the_same_box():
    candidate = detections(REFERENCE.boxes, REFERENCE.scores, [0, 3, 5])
    _, _, _, mismatches, _ = compare_detections(REFERENCE, candidate)
    assert any("PyTorch detection 2" in m for m in mismatches)
    assert any("ONNX detection 2" in m for m in mismatches)


def test_no_detections_on_both_sides_agree():
    empty = detections(np.zeros((0, 4)), [], [])
    assert compare_detections(empty, empty) == (0, None, None, [], [])


def test_detections_on_one_side_only_are_listed():
    empty = detections(np.zeros((0, 4)), [], [])
    mismatches = compare_detections(empty, REFERENCE)[3]
    assert mismatches[0] == "0 detections in PyTorch but 3 in ONNX"
    assert len(mismatches) == 4


def test_a_wrong_output_dtype_breaks_the_contract():
    candidate = Detections(REFERENCE.boxes, REFERENCE.scores, REFERENCE.labels.astype(np.int32))
    mismatches = compare_detections(REFERENCE, candidate)[3]
    assert mismatches == ["onnx labels dtype int32, expected int64"]


def test_identical_degenerate_boxes_count_as_a_match():
    flat = detections([[5, 5, 5, 9]], [0.5], [3])
    assert compare_detections(flat, flat)[3] == []


def test_report_table_and_dict_show_each_image():
    check = ImageCheck("a.png", 64, 48, False, 2, 2, 2, 0.9999, 1e-7)
    blank = ImageCheck("blank", 64, 64, True, 0, 0, 0, None, None)
    report = ValidationReport((check, blank))
    assert report.passed and report.empty_output_exercised
    table = report.format_table()
    assert "a.png" in table and "64x48" in table and "blank (blank)" in table
    assert report.to_dict()["images"][0]["pytorch_detections"] == 2


CUTOFFS = Cutoffs(score_threshold=0.05, max_detections=3, nms_iou=0.5)


def test_a_detection_tied_with_the_last_place_is_a_tie_not_a_mismatch():
    reference = detections(
        [[0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 60]], [0.9, 0.5, 0.3002], [0, 3, 7]
    )
    candidate = detections(
        [[0, 0, 10, 10], [20, 20, 40, 40], [70, 70, 90, 90]], [0.9, 0.5, 0.3001], [0, 3, 7]
    )
    matched, _, _, mismatches, ties = compare_detections(reference, candidate, cutoffs=CUTOFFS)
    assert (matched, mismatches) == (2, [])
    assert len(ties) == 2 and all("cutoff" in tie for tie in ties)
    # Without the detector's cutoffs the same answers are a mismatch.
    assert compare_detections(reference, candidate)[3]


def test_a_detection_at_the_score_threshold_kept_by_one_runtime_only_is_a_tie():
    candidate = detections(
        np.vstack([REFERENCE.boxes[:2], [[60, 60, 70, 70]]]), [0.9, 0.8, 0.0503], [0, 3, 7]
    )
    reference = detections(REFERENCE.boxes[:2], REFERENCE.scores[:2], REFERENCE.labels[:2])
    _, _, _, mismatches, ties = compare_detections(reference, candidate, cutoffs=CUTOFFS)
    assert mismatches == []
    assert ties == [
        "ONNX label 7 score 0.0503 box [60.0, 60.0, 70.0, 70.0] ties with the other runtime's "
        "cutoff (score 0.0500)"
    ]


def test_nms_choosing_the_other_of_two_near_equal_boxes_is_a_tie():
    reference = detections([[0, 0, 10, 10], [20, 20, 40, 40]], [0.9, 0.7004], [0, 3])
    candidate = detections([[0, 0, 10, 10], [22, 20, 42, 40]], [0.9, 0.7000], [0, 3])
    _, _, _, mismatches, ties = compare_detections(reference, candidate, cutoffs=CUTOFFS)
    assert mismatches == []
    assert len(ties) == 1 and ties[0].startswith("NMS kept PyTorch label 3")


def test_a_confident_detection_missing_on_one_side_is_still_a_mismatch_with_cutoffs():
    candidate = detections(REFERENCE.boxes[:2], REFERENCE.scores[:2], REFERENCE.labels[:2])
    _, _, _, mismatches, ties = compare_detections(REFERENCE, candidate, cutoffs=CUTOFFS)
    assert ties == []
    assert mismatches[0] == "3 detections in PyTorch but 2 in ONNX"
    assert "PyTorch detection 2 (label 7 score 0.8000" in mismatches[1]
