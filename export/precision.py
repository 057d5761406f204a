"""The reduced-precision step of an export: calibrate, quantize, and pass the accuracy gate.

:func:`reduce_precision` runs after the FP32 graph has passed the parity gate. For ``int8`` it
takes calibration images from the training split of the checkpoint's own training run,
quantizes the FP32 graph (:mod:`export.quantize`), and scores both graphs on the validation
split (:mod:`export.accuracy_gate`); the INT8 graph is returned only if it keeps its AP, and the
exporter then publishes it instead of the FP32 graph.

Example:
    >>> path, report = reduce_precision(fp32, checkpoint, options, scratch)   # doctest: +SKIP
    >>> report.to_dict()["passed"]                                           # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from detstack.errors import ConfigError
from export.accuracy_gate import (
    DEFAULT_MAX_AP_DROP,
    PrecisionReport,
    calibration_images,
    check_precision,
    training_split,
)
from export.quantize import DEFAULT_PLAN, QuantizationPlan, quantize_int8

__all__ = [
    "PRECISIONS",
    "Precision",
    "PrecisionOptions",
    "check_model_precision",
    "reduce_precision",
]

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "int8"]
#: Precisions ``detstack export`` writes. FP16 and BF16 are not offered: onnxruntime's CPU
#: provider runs FP16 convolutions slower than FP32 here and has no BF16 Conv kernel
#: (benchmarks/results/README.md, "Quantized detector").
PRECISIONS: tuple[str, ...] = ("fp32", "int8")


@dataclass(frozen=True)
class PrecisionOptions:
    """How a reduced-precision graph is made and judged.

    Attributes:
        precision: ``fp32`` (nothing to do) or ``int8``.
        calibration_images: training-split images the INT8 ranges are calibrated on.
        max_ap_drop: the accuracy gate's tolerance, in COCO AP points.
        accuracy_images: score on at most this many validation images (``None``: all).
        dataset: where the training dataset is, if not where the checkpoint says.
        s3_endpoint_url: endpoint of an S3-compatible store for ``dataset``.
        plan: what is quantized (:data:`export.quantize.DEFAULT_PLAN`).
    """

    precision: str = "fp32"
    calibration_images: int = 32
    max_ap_drop: float = DEFAULT_MAX_AP_DROP
    accuracy_images: int | None = None
    dataset: str | None = None
    s3_endpoint_url: str | None = None
    plan: QuantizationPlan = DEFAULT_PLAN

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"unknown precision {self.precision!r}; expected one of {', '.join(PRECISIONS)}"
            )
        if not 1 <= self.calibration_images <= 1024:
            raise ConfigError(
                f"calibration_images must be in 1..1024, got {self.calibration_images}"
            )
        if not 0.0 <= self.max_ap_drop <= 100.0:
            raise ConfigError(
                f"max_ap_drop must be in 0..100 COCO AP points, got {self.max_ap_drop}"
            )
        if self.accuracy_images is not None and self.accuracy_images < 1:
            raise ConfigError(
                f"accuracy_images must be at least 1 (or unset: all), got {self.accuracy_images}"
            )


def reduce_precision(
    fp32_path: Path, checkpoint: Any, options: PrecisionOptions, scratch: Path
) -> tuple[Path, PrecisionReport]:
    """The ``options.precision`` graph of ``fp32_path``, written under ``scratch``, and its gate.

    Raises:
        ConfigError: no training dataset or validation split to calibrate and judge with.
        ExportError: the quantizer failed.
        ExportValidationError: the accuracy gate refused the graph (both APs named).
    """
    if options.precision != "int8":
        raise ConfigError(f"precision {options.precision!r} needs no reduction step")
    split = training_split(checkpoint, options.dataset, s3_endpoint_url=options.s3_endpoint_url)
    images = calibration_images(split, options.calibration_images)
    int8_path = Path(scratch) / "model.int8.onnx"
    started = time.perf_counter()
    record = quantize_int8(fp32_path, int8_path, images, options.plan)
    quantized_s = time.perf_counter() - started
    quantization = record.to_dict()
    quantization["calibration"]["split"] = "training"
    quantization["seconds"] = round(quantized_s, 1)
    report = check_precision(
        fp32_path,
        int8_path,
        split,
        precision=options.precision,
        max_ap_drop=options.max_ap_drop,
        max_images=options.accuracy_images,
        quantization=quantization,
    )
    return int8_path, report


def _published_precision(version_dir: Path) -> str | None:
    try:
        manifest = json.loads((version_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    export = manifest.get("export") if isinstance(manifest, dict) else None
    precision = export.get("precision", "fp32") if isinstance(export, dict) else "fp32"
    return precision if isinstance(precision, str) else None


def check_model_precision(repository: Path, name: str, precision: str) -> None:
    """Refuse to add a ``precision`` version to a model whose published versions have another.

    One model name, one precision: Triton serves a model's latest version, so a client asking
    for ``name`` must not silently switch between FP32 and INT8. INT8 lives in a sibling model
    (by convention ``<name>-int8``), and both can be served side by side.

    Raises:
        ConfigError: the model's latest version has another precision (the sibling name
            suggested).
    """
    model_dir = Path(repository) / name
    versions = sorted(
        (int(p.name), p) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()
    )
    if not versions:
        return
    number, latest = versions[-1]
    published = _published_precision(latest)
    if published is None or published == precision:
        return
    base = name.removesuffix(f"-{published}") if published != "fp32" else name
    suggestion = base if precision == "fp32" else f"{base}-{precision}"
    raise ConfigError(
        f"model {name!r} in {repository} is {published} (version {number}); a model name "
        f"holds one precision, so the {precision} export goes to a sibling model: "
        f"--name {suggestion}"
    )
