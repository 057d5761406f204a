"""How two detectors' answers on one image are compared: matching, tolerances and ties.

The pure-numpy half of the parity gate (:mod:`export.validation` runs the models):

* the same number of detections;
* every PyTorch detection matched one-to-one with an ONNX detection of the **same label** whose
  box has **IoU ≥ 0.99** with it (matching by IoU, not by position: two detections whose scores
  tie to the last bit may come out in either order, which is not a difference);
* matched **scores within 1e-3**;
* the contract's dtypes and shapes (float32 N×4, float32 N, int64 N).

**Ties.** Two runtimes compute scores that differ in the last bits, so a detection whose score
ties (within the score tolerance) with a *cutoff* may be kept by one and dropped by the other:
the model's score threshold, the last of its ``box_detections_per_img`` places, or non-maximum
suppression choosing between two overlapping boxes of near-equal score. Such a detection is
not a disagreement of the graphs; it is excused, and listed in the report as a tie, only when
its score is within the tolerance of that cutoff (or of the near-equal box NMS kept instead).
Every other unmatched detection, and any count difference it causes, is a mismatch. A barely
trained model (the seed's one epoch at a tiny learning rate) scores hundreds of boxes almost
equally, and without this rule its export would fail for no fault of the graph.

Example:
    >>> matched, min_iou, max_diff, mismatches, ties = compare_detections(
    ...     pytorch, onnx, cutoffs=Cutoffs.of(adapter))                   # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from detstack.contract import BOXES, LABELS, SCORES

__all__ = ["IOU_THRESHOLD", "SCORE_TOLERANCE", "Cutoffs", "Detections", "compare_detections"]

IOU_THRESHOLD = 0.99
SCORE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Cutoffs:
    """Where the detector itself drops detections (its ``roi_heads`` settings)."""

    score_threshold: float
    max_detections: int
    nms_iou: float

    @classmethod
    def of(cls, adapter: Any) -> Cutoffs | None:
        """The cutoffs of a torchvision detector wrapped by ``adapter`` (None if unknown)."""
        heads = getattr(getattr(adapter, "detector", None), "roi_heads", None)
        if heads is None:
            return None
        return cls(
            float(heads.score_thresh), int(heads.detections_per_img), float(heads.nms_thresh)
        )


@dataclass(frozen=True)
class Detections:
    """One model answer: boxes N×4, scores N, labels N (dataset ids)."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    @property
    def count(self) -> int:
        return int(self.scores.shape[0]) if self.scores.ndim == 1 else -1


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes; two identical degenerate boxes count as IoU 1."""
    a = a.astype(np.float64)[:, None, :]
    b = b.astype(np.float64)[None, :, :]
    width = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    height = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    intersection = width * height
    area_a = (a[..., 2] - a[..., 0]).clip(0) * (a[..., 3] - a[..., 1]).clip(0)
    area_b = (b[..., 2] - b[..., 0]).clip(0) * (b[..., 3] - b[..., 1]).clip(0)
    union = area_a + area_b - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, intersection / np.where(union > 0, union, 1), 0.0)
    identical = np.all(np.abs(a - b) <= 1e-4, axis=-1)
    return np.where(identical, 1.0, iou)


def _describe(d: Detections, i: int) -> str:
    box = ", ".join(f"{v:.1f}" for v in d.boxes[i])
    return f"label {int(d.labels[i])} score {float(d.scores[i]):.4f} box [{box}]"


def _contract_problems(side: str, d: Detections) -> list[str]:
    problems = []
    for spec, array in ((BOXES, d.boxes), (SCORES, d.scores), (LABELS, d.labels)):
        if array.dtype != spec.numpy_dtype:
            problems.append(f"{side} {spec.name} dtype {array.dtype}, expected {spec.numpy_dtype}")
        if array.ndim != len(spec.shape) or any(
            want >= 0 and got != want for got, want in zip(array.shape, spec.shape, strict=False)
        ):
            problems.append(f"{side} {spec.name} shape {array.shape}, expected {spec.shape}")
    if not problems and not (d.boxes.shape[0] == d.scores.shape[0] == d.labels.shape[0]):
        problems.append(
            f"{side} outputs disagree on N: boxes {d.boxes.shape[0]}, scores "
            f"{d.scores.shape[0]}, labels {d.labels.shape[0]}"
        )
    return problems


def compare_detections(
    reference: Detections,
    candidate: Detections,
    *,
    iou_threshold: float = IOU_THRESHOLD,
    score_tolerance: float = SCORE_TOLERANCE,
    cutoffs: Cutoffs | None = None,
) -> tuple[int, float | None, float | None, list[str], list[str]]:
    """Match ``candidate`` (ONNX) detections to ``reference`` (PyTorch) ones.

    Pairs must have the same label and IoU ≥ ``iou_threshold``; among those, the pairs with the
    highest IoU are taken first, one-to-one. With ``cutoffs``, unmatched detections that tie
    with one of the detector's cutoffs are excused as ties (see the module docstring); without
    them every unmatched detection is a mismatch.

    Returns:
        ``(matched, min IoU of matched pairs, max |score difference| of matched pairs,
        mismatches, ties)``: an empty ``mismatches`` list means the two answers agree.
    """
    problems = _contract_problems("pytorch", reference) + _contract_problems("onnx", candidate)
    if problems:
        return 0, None, None, problems, []

    iou = _iou_matrix(reference.boxes, candidate.boxes)
    same_label = reference.labels[:, None] == candidate.labels[None, :]
    eligible = np.where(same_label & (iou >= iou_threshold), iou, -1.0)
    ref_match = np.full(reference.count, -1)
    cand_taken = np.zeros(candidate.count, dtype=bool)
    for flat in np.argsort(-eligible, axis=None, kind="stable"):
        r, c = np.unravel_index(flat, eligible.shape)
        if eligible[r, c] < 0:
            break
        if ref_match[r] < 0 and not cand_taken[c]:
            ref_match[r] = c
            cand_taken[c] = True

    mismatches: list[str] = []
    ious, diffs = [], []
    for r, c in enumerate(ref_match):
        if c < 0:
            continue
        ious.append(float(iou[r, c]))
        diff = abs(float(reference.scores[r]) - float(candidate.scores[c]))
        diffs.append(diff)
        if diff > score_tolerance:
            mismatches.append(
                f"PyTorch detection {r} ({_describe(reference, r)}) and its ONNX match differ "
                f"in score by {diff:.2e} (> {score_tolerance:g})"
            )

    lost = [r for r in range(reference.count) if ref_match[r] < 0]
    extra = [int(c) for c in np.flatnonzero(~cand_taken)]
    ties: list[str] = []
    if cutoffs is not None:
        lost, extra, ties = _excuse_ties(
            reference, candidate, lost, extra, iou, same_label, score_tolerance, cutoffs
        )
    if lost or extra:
        if reference.count != candidate.count:
            mismatches.insert(
                0, f"{reference.count} detections in PyTorch but {candidate.count} in ONNX"
            )
        for r in lost:
            same = np.where(same_label[r], iou[r], -1.0) if candidate.count else np.array([-1.0])
            best = int(np.argmax(same))
            hint = (
                f"best same-label IoU {same[best]:.4f} with ONNX {_describe(candidate, best)}"
                if same[best] >= 0
                else "no ONNX detection has that label"
            )
            mismatches.append(
                f"PyTorch detection {r} ({_describe(reference, r)}) has no ONNX match "
                f"with IoU >= {iou_threshold}: {hint}"
            )
        mismatches.extend(
            f"ONNX detection {c} ({_describe(candidate, c)}) has no PyTorch match" for c in extra
        )
    return (
        len(ious),
        min(ious) if ious else None,
        max(diffs) if diffs else None,
        mismatches,
        ties,
    )


def _excuse_ties(
    reference: Detections,
    candidate: Detections,
    lost: list[int],
    extra: list[int],
    iou: np.ndarray,
    same_label: np.ndarray,
    tolerance: float,
    cutoffs: Cutoffs,
) -> tuple[list[int], list[int], list[str]]:
    """Split unmatched detections into ties with a cutoff and real mismatches."""
    ties: list[str] = []
    # NMS picked a different one of two overlapping boxes of near-equal score.
    remaining_extra = list(extra)
    remaining_lost = []
    for r in lost:
        swap = next(
            (
                c
                for c in remaining_extra
                if same_label[r, c]
                and iou[r, c] > cutoffs.nms_iou
                and abs(float(reference.scores[r]) - float(candidate.scores[c])) <= tolerance
            ),
            None,
        )
        if swap is None:
            remaining_lost.append(r)
            continue
        remaining_extra.remove(swap)
        ties.append(
            f"NMS kept PyTorch {_describe(reference, r)} but ONNX "
            f"{_describe(candidate, swap)} (overlapping, scores within {tolerance:g})"
        )

    def cutoff(side: Detections) -> float:
        level = cutoffs.score_threshold
        if side.count >= cutoffs.max_detections:
            level = max(level, float(side.scores.min()))
        return level

    def at_cutoff(indices: list[int], side: Detections, other: Detections, name: str) -> list[int]:
        level = cutoff(other)
        kept = []
        for i in indices:
            if float(side.scores[i]) <= level + tolerance:
                ties.append(
                    f"{name} {_describe(side, i)} ties with the other runtime's cutoff "
                    f"(score {level:.4f})"
                )
            else:
                kept.append(i)
        return kept

    remaining_lost = at_cutoff(remaining_lost, reference, candidate, "PyTorch")
    remaining_extra = at_cutoff(remaining_extra, candidate, reference, "ONNX")
    return remaining_lost, remaining_extra, ties
