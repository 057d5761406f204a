"""What the parity gate found: one :class:`ImageCheck` per image, one :class:`ValidationReport`.

Plain data for the manifest (``to_dict``) and the CLI (``format_table``); built by
:func:`export.validation.validate_export`, which re-exports both names.

Example:
    >>> print(report.format_table())                                       # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from export._matching import IOU_THRESHOLD, SCORE_TOLERANCE

__all__ = ["ImageCheck", "ValidationReport"]


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
