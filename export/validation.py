"""The parity gate: the exported graph must answer as PyTorch does, or nothing is written.

:func:`validate_export` runs the PyTorch adapter and the ONNX graph (onnxruntime, CPU provider)
on the same images and compares every output (:mod:`export._matching`: same counts, same
labels, box IoU ≥ 0.99, scores within 1e-3, the contract's dtypes and shapes; a detection that
only ties with one of the detector's cutoffs is excused and listed as a tie).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detstack.contract import IMAGE
from detstack.errors import ExportValidationError
from export._matching import (
    IOU_THRESHOLD,
    SCORE_TOLERANCE,
    Cutoffs,
    Detections,
    compare_detections,
)
from export._validation_report import ImageCheck, ValidationReport

__all__ = [
    "IOU_THRESHOLD",
    "SCORE_TOLERANCE",
    "Cutoffs",
    "Detections",
    "ImageCheck",
    "ValidationImage",
    "ValidationReport",
    "compare_detections",
    "onnx_session",
    "validate_export",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidationImage:
    """One image of the gate: a name for the report, CHW uint8 pixels, and its role."""

    name: str
    pixels: np.ndarray
    blank: bool = False


def _run_pytorch(adapter: Any, pixels: np.ndarray) -> Detections:
    import torch

    with torch.no_grad():
        boxes, scores, labels = adapter(torch.from_numpy(np.ascontiguousarray(pixels)))
    return Detections(boxes.numpy(), scores.numpy(), labels.numpy())


def onnx_session(path: Path | bytes, threads: int | None = None, *, spinning: bool = True) -> Any:
    """An onnxruntime CPU session of ``path`` (or a serialized model), the gates' runtime.

    ``spinning=False`` makes idle intra-op threads sleep, as the served model's do: needed
    wherever two sessions take turns (a side-by-side benchmark), or the idle one's spinning
    threads slow the other down.
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    model = path if isinstance(path, bytes) else str(path)
    return onnxruntime.InferenceSession(
        model, sess_options=options, providers=["CPUExecutionProvider"]
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
