"""The accuracy gate for reduced precision: an INT8 graph is written only if it keeps its AP.

The FP32 parity gate (:mod:`export.validation`) asks whether onnxruntime answers as PyTorch
does, detection by detection. A quantized graph never does, so it gets a different question:
does it detect as well? :func:`check_precision` runs the FP32 graph and the reduced-precision
graph (onnxruntime, CPU provider) on the **validation split** of the dataset the checkpoint was
trained on and scores both with pycocotools' ``COCOeval``; the export goes on only when the
candidate's COCO AP is at most ``max_ap_drop`` AP points (AP × 100) below the FP32 graph's.

The split is the training run's own (:func:`training_split`): the same dataset (its fingerprint
must be the one stored in the checkpoint), ``val_fraction`` and ``seed``, so calibration images
(:func:`calibration_images`) come from the training images and the gate scores on images that
neither training nor calibration saw.

Images enter the graphs as served ones do: decoded by :func:`detstack.images.decode_image`,
uint8 CHW into the ``image`` input; the graph resizes and normalises them itself.

Example:
    >>> split = training_split(checkpoint, None)                          # doctest: +SKIP
    >>> report = check_precision(fp32, int8, split, precision="int8")     # doctest: +SKIP
    >>> report.reference_ap, report.candidate_ap                          # doctest: +SKIP
    (61.2, 60.9)
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detstack.contract import IMAGE
from detstack.errors import ConfigError, ExportValidationError
from detstack.images import to_chw
from export.validation import onnx_session

__all__ = [
    "DEFAULT_MAX_AP_DROP",
    "GraphScore",
    "PrecisionReport",
    "TrainingSplit",
    "calibration_images",
    "check_precision",
    "evaluate_graph",
    "training_split",
]

logger = logging.getLogger(__name__)

#: Default tolerance: the reduced-precision graph may lose at most this many COCO AP points.
DEFAULT_MAX_AP_DROP = 1.0


@dataclass(frozen=True)
class TrainingSplit:
    """A checkpoint's dataset and its training run's split into training and validation."""

    dataset: Any  # training.coco.CocoDataset
    source: str
    train_ids: tuple[int, ...]
    val_ids: tuple[int, ...]
    val_fraction: float
    seed: int


def training_split(
    checkpoint: Any, source: str | None, *, s3_endpoint_url: str | None = None
) -> TrainingSplit:
    """The training run's split of its dataset (``source`` overrides where the dataset is).

    Raises:
        ConfigError: no dataset known, no validation split, or a dataset that is not the one
            the checkpoint was trained on (another fingerprint).
        DatasetError: the dataset cannot be read.
    """
    from training.coco import load_dataset, split_dataset

    train_config = checkpoint.train_config or {}
    where = source or train_config.get("dataset")
    if not where:
        raise ConfigError(
            "reduced precision needs the training dataset (calibration images from its training "
            "split, the accuracy gate on its validation split); the checkpoint names none, give "
            "it with --samples-from DATASET"
        )
    val_fraction = float(train_config.get("val_fraction", 0.0))
    seed = int(train_config.get("seed", 0))
    if val_fraction <= 0:
        raise ConfigError(
            f"reduced precision needs a validation split for its accuracy gate, but the "
            f"checkpoint was trained with val_fraction {val_fraction}; retrain with "
            "--val-fraction 0.2 (or export with --precision fp32)"
        )
    dataset = load_dataset(str(where), s3_endpoint_url=s3_endpoint_url)
    expected = checkpoint.dataset_fingerprint
    if expected and dataset.fingerprint != expected:
        raise ConfigError(
            f"dataset {where} has fingerprint {dataset.fingerprint[:16]}, but the checkpoint "
            f"was trained on {expected[:16]}: its validation split would not be the held-out "
            "one; give the training dataset with --samples-from"
        )
    train_ids, val_ids = split_dataset(dataset.image_ids, val_fraction, seed)
    return TrainingSplit(dataset, str(where), tuple(train_ids), tuple(val_ids), val_fraction, seed)


def calibration_images(split: TrainingSplit, count: int) -> list[np.ndarray]:
    """``count`` training images (uint8 CHW), spread evenly over the training split."""
    if count < 1:
        raise ConfigError(f"calibration images must be at least 1, got {count}")
    ids = split.train_ids
    if not ids:
        raise ConfigError(f"the training split of {split.source} has no image to calibrate on")
    picks = np.linspace(0, len(ids) - 1, num=min(count, len(ids))).round().astype(int)
    return [to_chw(split.dataset.read_image(ids[i])) for i in sorted(set(picks.tolist()))]


@dataclass(frozen=True)
class GraphScore:
    """COCO metrics of one graph on the validation images, and how long it took."""

    metrics: dict[str, float]
    images: int
    detections: int
    seconds: float

    @property
    def ap_points(self) -> float:
        """COCO AP (IoU 0.50:0.95) × 100."""
        return 100.0 * self.metrics["AP"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "AP": round(self.ap_points, 3),
            "AP50": round(100.0 * self.metrics["AP50"], 3),
            "AP75": round(100.0 * self.metrics["AP75"], 3),
            "detections": self.detections,
            "images": self.images,
            "seconds": round(self.seconds, 2),
            "mean_ms_per_image": round(1000.0 * self.seconds / max(1, self.images), 2),
        }


def evaluate_graph(
    onnx_path: Path,
    dataset: Any,
    image_ids: Sequence[int],
    *,
    threads: int | None = None,
) -> GraphScore:
    """COCO box metrics of the graph at ``onnx_path`` on ``image_ids`` of ``dataset``.

    Metrics are fractions (``AP`` 0..1) under :data:`training.engine.COCO_METRICS` names; a
    graph that finds nothing scores 0 everywhere.
    """
    from training.engine import COCO_METRICS, coco_metrics, detections_to_coco

    session = onnx_session(onnx_path, threads)
    results: list[dict[str, Any]] = []
    started = time.perf_counter()
    for image_id in image_ids:
        pixels = to_chw(dataset.read_image(image_id))
        boxes, scores, labels = session.run(None, {IMAGE.name: pixels})
        results.extend(detections_to_coco(image_id, boxes, scores, labels))
    seconds = time.perf_counter() - started
    scored = coco_metrics(dataset.to_coco_api(image_ids), results, image_ids)
    # -1 (no ground truth of a size) counts as 0 here: the gate compares AP, not sizes.
    metrics = {name: max(0.0, scored[name]) for name in COCO_METRICS}
    return GraphScore(metrics, len(image_ids), len(results), seconds)


@dataclass(frozen=True)
class PrecisionReport:
    """The gate's verdict: both graphs' scores on the same validation images."""

    precision: str
    reference: GraphScore
    candidate: GraphScore
    max_ap_drop: float
    dataset: str
    val_fraction: float
    seed: int
    quantization: dict[str, Any] = field(default_factory=dict)

    @property
    def reference_ap(self) -> float:
        return self.reference.ap_points

    @property
    def candidate_ap(self) -> float:
        return self.candidate.ap_points

    @property
    def ap_drop(self) -> float:
        return self.reference_ap - self.candidate_ap

    @property
    def passed(self) -> bool:
        return math.isfinite(self.candidate_ap) and self.ap_drop <= self.max_ap_drop

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "passed": self.passed,
            "criterion": f"COCO AP drop vs the FP32 graph <= {self.max_ap_drop:g} AP points",
            "max_ap_drop": self.max_ap_drop,
            "ap_drop": round(self.ap_drop, 3),
            "fp32": self.reference.to_dict(),
            self.precision: self.candidate.to_dict(),
            "split": {
                "dataset": self.dataset,
                "val_fraction": self.val_fraction,
                "seed": self.seed,
                "images": self.reference.images,
            },
            "runtime": "onnxruntime CPUExecutionProvider",
            "quantization": dict(self.quantization),
        }

    def format_line(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return (
            f"accuracy gate {verdict}: COCO AP {self.candidate_ap:.2f} ({self.precision}) vs "
            f"{self.reference_ap:.2f} (fp32) on {self.reference.images} validation images, "
            f"drop {self.ap_drop:.2f} (max {self.max_ap_drop:g})"
        )


def check_precision(
    fp32_path: Path,
    candidate_path: Path,
    split: TrainingSplit,
    *,
    precision: str,
    max_ap_drop: float = DEFAULT_MAX_AP_DROP,
    max_images: int | None = None,
    quantization: dict[str, Any] | None = None,
    raise_on_failure: bool = True,
) -> PrecisionReport:
    """Score both graphs on the validation split; refuse the candidate if it loses too much AP.

    Args:
        fp32_path: the FP32 graph (already through the parity gate).
        candidate_path: the reduced-precision graph.
        split: the training run's split (:func:`training_split`).
        precision: the candidate's name for the report (``int8``).
        max_ap_drop: the largest AP loss accepted, in AP points (AP × 100).
        max_images: score on at most this many validation images (evenly spread); ``None``:
            all of them.
        quantization: the quantizer's record, copied into the report.

    Raises:
        ConfigError: a negative or non-finite ``max_ap_drop``, or no validation image.
        ExportValidationError: the candidate loses more than ``max_ap_drop`` (both figures
            named).
    """
    if not (math.isfinite(max_ap_drop) and max_ap_drop >= 0):
        raise ConfigError(f"max_ap_drop must be a number >= 0 (AP points), got {max_ap_drop}")
    ids = list(split.val_ids)
    if not ids:
        raise ConfigError(f"the validation split of {split.source} is empty")
    if max_images is not None and max_images < len(ids):
        picks = np.linspace(0, len(ids) - 1, num=max_images).round().astype(int)
        ids = [ids[i] for i in sorted(set(picks.tolist()))]
    reference = evaluate_graph(fp32_path, split.dataset, ids)
    candidate = evaluate_graph(candidate_path, split.dataset, ids)
    report = PrecisionReport(
        precision=precision,
        reference=reference,
        candidate=candidate,
        max_ap_drop=max_ap_drop,
        dataset=split.source,
        val_fraction=split.val_fraction,
        seed=split.seed,
        quantization=dict(quantization or {}),
    )
    logger.info(report.format_line())
    if raise_on_failure and not report.passed:
        raise ExportValidationError(
            f"the {precision} graph loses too much accuracy: COCO AP {report.candidate_ap:.2f} "
            f"against {report.reference_ap:.2f} for the FP32 graph on {len(ids)} validation "
            f"images of {split.source} (drop {report.ap_drop:.2f} AP points, allowed "
            f"{max_ap_drop:g}); nothing was written. Calibrate on more or more typical images "
            "(--calibration-images), raise --max-ap-drop, or export with --precision fp32"
        )
    return report
