"""The parity gate: the exported graph must answer as PyTorch does, or nothing is written.

:func:`validate_export` runs the PyTorch adapter and the ONNX graph (onnxruntime, CPU provider)
on the same images and compares every output:

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

Every mismatch of every image is collected; :class:`ValidationReport` holds them and
:func:`validate_export` raises one :class:`~detstack.errors.ExportValidationError` listing all
of them.

Example:
    >>> report = validate_export(adapter, Path("model.onnx"), images)      # doctest: +SKIP
    >>> print(report.format_table())                                       # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detstack.contract import BOXES, IMAGE, LABELS, SCORES
from detstack.errors import ExportValidationError

__all__ = [
    "IOU_THRESHOLD",
    "SCORE_TOLERANCE",
    "Cutoffs",
    "Detections",
    "ImageCheck",
    "ValidationImage",
    "ValidationReport",
    "compare_detections",
    "validate_export",
]

logger = logging.getLogger(__name__)

IOU_THRESHOLD = 0.99
SCORE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class ValidationImage:
    """One image of the gate: a name for the report, CHW uint8 pixels, and its role."""

    name: str
    pixels: np.ndarray
    blank: bool = False


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


@dataclass(frozen=True)
class ImageCheck:
    """The comparison on one image."""

    name: str
    width: int
    height: int
    blank: bool
    pytorch_count: int
    onnx_count: int
    matched: int
    min_iou: float | None
    max_score_diff: float | None
    mismatches: tuple[str, ...] = ()
    ties: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return not self.mismatches

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": self.name,
            "width": self.width,
            "height": self.height,
            "blank": self.blank,
            "pytorch_detections": self.pytorch_count,
            "onnx_detections": self.onnx_count,
            "matched": self.matched,
            "min_iou": self.min_iou,
            "max_score_diff": self.max_score_diff,
            "passed": self.passed,
            "mismatches": list(self.mismatches),
            "ties": list(self.ties),
        }


@dataclass(frozen=True)
class ValidationReport:
    """All comparisons of one export, with the tolerances they used."""

    checks: tuple[ImageCheck, ...]
    iou_threshold: float = IOU_THRESHOLD
    score_tolerance: float = SCORE_TOLERANCE
    runtime: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def mismatches(self) -> list[str]:
        return [f"{c.name}: {m}" for c in self.checks for m in c.mismatches]

    @property
    def empty_output_exercised(self) -> bool:
        """Whether some image gave zero detections on both sides (the N = 0 path ran)."""
        return any(c.pytorch_count == 0 and c.onnx_count == 0 for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "iou_threshold": self.iou_threshold,
            "score_tolerance": self.score_tolerance,
            "empty_output_exercised": self.empty_output_exercised,
            "runtime": dict(self.runtime),
            "images": [c.to_dict() for c in self.checks],
        }

    def format_table(self) -> str:
        """A plain-text table, one row per image."""
        header = (
            "image", "size", "pytorch", "onnx", "matched", "ties", "min IoU", "max |Δscore|", "ok"
        )  # fmt: skip
        rows = [header]
        for c in self.checks:
            rows.append(
                (
                    c.name + (" (blank)" if c.blank else ""),
                    f"{c.width}x{c.height}",
                    str(c.pytorch_count),
                    str(c.onnx_count),
                    str(c.matched),
                    str(len(c.ties)),
                    "-" if c.min_iou is None else f"{c.min_iou:.5f}",
                    "-" if c.max_score_diff is None else f"{c.max_score_diff:.2e}",
                    "yes" if c.passed else "NO",
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(line.rstrip() for line in lines)


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


def _run_pytorch(adapter: Any, pixels: np.ndarray) -> Detections:
    import torch

    with torch.no_grad():
        boxes, scores, labels = adapter(torch.from_numpy(np.ascontiguousarray(pixels)))
    return Detections(boxes.numpy(), scores.numpy(), labels.numpy())


def onnx_session(path: Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session of ``path`` (the reference runtime of the gates)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(
        str(path), sess_options=options, providers=["CPUExecutionProvider"]
    )


def validate_export(
    adapter: Any,
    onnx_path: Path,
    images: Sequence[ValidationImage],
    *,
    iou_threshold: float = IOU_THRESHOLD,
    score_tolerance: float = SCORE_TOLERANCE,
    raise_on_failure: bool = True,
    category_ids: Sequence[int] | None = None,
) -> ValidationReport:
    """Compare PyTorch and onnxruntime on ``images``.

    With ``category_ids`` (the checkpoint's dataset ids), every ONNX label must also be one of
    them: PyTorch and ONNX share the adapter's lookup table, so parity alone would not notice a
    wrong table.

    Raises:
        ExportValidationError: any mismatch on any image (all are listed), or the ONNX graph
            failed to run on an image.
    """
    import onnxruntime

    session = onnx_session(onnx_path)
    cutoffs = Cutoffs.of(adapter)
    checks = []
    for image in images:
        pixels = image.pixels
        if pixels.dtype != IMAGE.numpy_dtype or pixels.ndim != 3 or pixels.shape[0] != 3:
            raise ValueError(f"{image.name}: expected a uint8 3xHxW array, got {pixels.shape}")
        reference = _run_pytorch(adapter, pixels)
        try:
            outputs = session.run(None, {IMAGE.name: pixels})
        except Exception as error:  # onnxruntime raises its own exception types
            checks.append(
                ImageCheck(
                    image.name,
                    pixels.shape[2],
                    pixels.shape[1],
                    image.blank,
                    reference.count,
                    -1,
                    0,
                    None,
                    None,
                    (f"onnxruntime failed: {str(error).splitlines()[0]}",),
                )
            )
            continue
        candidate = Detections(*outputs)
        matched, min_iou, max_diff, mismatches, ties = compare_detections(
            reference,
            candidate,
            iou_threshold=iou_threshold,
            score_tolerance=score_tolerance,
            cutoffs=cutoffs,
        )
        if category_ids is not None and candidate.labels.ndim == 1:
            unknown = sorted(set(candidate.labels.tolist()) - set(category_ids))
            if unknown:
                mismatches.append(
                    f"ONNX labels {unknown} are not category ids of the checkpoint "
                    f"(known: {', '.join(map(str, category_ids))})"
                )
        checks.append(
            ImageCheck(
                name=image.name,
                width=int(pixels.shape[2]),
                height=int(pixels.shape[1]),
                blank=image.blank,
                pytorch_count=reference.count,
                onnx_count=candidate.count,
                matched=matched,
                min_iou=min_iou,
                max_score_diff=max_diff,
                mismatches=tuple(mismatches),
                ties=tuple(ties),
            )
        )
    report = ValidationReport(
        tuple(checks),
        iou_threshold=iou_threshold,
        score_tolerance=score_tolerance,
        runtime={"onnxruntime": onnxruntime.__version__, "provider": "CPUExecutionProvider"},
    )
    blank = [c for c in checks if c.blank]
    if blank and not report.empty_output_exercised:
        logger.warning(
            "the blank image gave %d detection(s): the gate could not check the graph's "
            "no-detection path with this model",
            blank[0].pytorch_count,
        )
    if raise_on_failure and not report.passed:
        listed = "\n".join(f"  - {m}" for m in report.mismatches)
        raise ExportValidationError(
            f"the ONNX graph disagrees with PyTorch ({len(report.mismatches)} mismatch(es); "
            f"criteria: same counts, same labels, box IoU >= {iou_threshold}, "
            f"|score difference| <= {score_tolerance:g}); nothing was written:\n{listed}\n"
            + report.format_table()
        )
    return report
