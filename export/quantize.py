"""INT8 static quantization of an exported detector graph (onnxruntime, QDQ format).

:func:`quantize_int8` is a pure function: the FP32 graph's path, calibration images and a
:class:`QuantizationPlan` in, the INT8 graph written to a path and a :class:`QuantizationRecord`
(what was quantized, what stayed float, on what it was calibrated) out.

What is quantized and what stays float was decided by measurement (benchmarks/
quantize_probe.py, figures in benchmarks/results/README.md): only the compute-heavy
convolutions and matrix products (``Conv``, ``Gemm``, ``MatMul``) are quantized, weights
per output channel (int8, symmetric) and activations per tensor (int8, calibrated by min/max
over the calibration images). Every other operator runs in float: the transform's
resize and normalisation, anchor decoding, NMS, RoiAlign, TopK and the box post-processing,
so boxes are computed and clipped in float. The default plan also keeps float the last layers
whose outputs *are* numbers the detector decodes: the RPN head's objectness and box-delta
convolutions and the box predictor's class and box-regression layers (:data:`DEFAULT_PLAN`).

The calibration images go into the graph's own ``image`` input (uint8 CHW), so they are
resized and normalised exactly as served images are.

Example:
    >>> record = quantize_int8(Path("model.onnx"), Path("model.int8.onnx"), images)
    ...                                                                     # doctest: +SKIP
    >>> record.quantized_nodes                                              # doctest: +SKIP
    {'Conv': 19, 'Gemm': 2}
"""

from __future__ import annotations

import fnmatch
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detstack.contract import IMAGE
from detstack.errors import ConfigError, ExportError

__all__ = [
    "DEFAULT_PLAN",
    "FLOAT_HEADS",
    "QuantizationPlan",
    "QuantizationRecord",
    "quantize_int8",
]

logger = logging.getLogger(__name__)

#: Node-name patterns of the layers whose outputs the detector decodes into boxes and scores.
FLOAT_HEADS: tuple[str, ...] = (
    "/detector/rpn/head/cls_logits*",
    "/detector/rpn/head/bbox_pred*",
    "/detector/roi_heads/box_predictor/*",
)

_CALIBRATION_METHODS = ("MinMax", "Percentile", "Entropy")


@dataclass(frozen=True)
class QuantizationPlan:
    """Which nodes are quantized, and how.

    Attributes:
        op_types: operator types to quantize; every other operator stays float.
        keep_float: ``fnmatch`` patterns of node names kept float even when their type is in
            ``op_types``.
        per_channel: one weight scale per output channel (else one per tensor).
        calibration_method: ``MinMax``, ``Percentile`` or ``Entropy`` (onnxruntime's names).
    """

    op_types: tuple[str, ...] = ("Conv", "Gemm", "MatMul")
    keep_float: tuple[str, ...] = FLOAT_HEADS
    per_channel: bool = True
    calibration_method: str = "MinMax"

    def __post_init__(self) -> None:
        if not self.op_types:
            raise ConfigError("a quantization plan needs at least one operator type to quantize")
        if self.calibration_method not in _CALIBRATION_METHODS:
            raise ConfigError(
                f"unknown calibration method {self.calibration_method!r}; expected one of "
                f"{', '.join(_CALIBRATION_METHODS)}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "op_types": list(self.op_types),
            "keep_float": list(self.keep_float),
            "per_channel": self.per_channel,
            "calibration_method": self.calibration_method,
            "weights": "int8, symmetric" + (", per channel" if self.per_channel else ""),
            "activations": "int8, per tensor",
            "format": "QDQ",
        }


#: The plan ``detstack export --precision int8`` uses (see the module docstring).
DEFAULT_PLAN = QuantizationPlan()


@dataclass(frozen=True)
class QuantizationRecord:
    """What :func:`quantize_int8` did: the plan, the nodes it touched and its calibration."""

    plan: QuantizationPlan
    quantized_nodes: dict[str, int]
    kept_float: tuple[str, ...]
    calibration_images: int
    calibration_sizes: tuple[tuple[int, int], ...]
    onnxruntime: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan": self.plan.to_dict(),
            "quantized_nodes": dict(self.quantized_nodes),
            "kept_float": list(self.kept_float),
            "calibration": {
                "images": self.calibration_images,
                "sizes": sorted({f"{w}x{h}" for w, h in self.calibration_sizes}),
                **self.extra,
            },
            "onnxruntime": self.onnxruntime,
        }


class _ImageReader:
    """onnxruntime's ``CalibrationDataReader`` protocol over uint8 CHW images."""

    def __init__(self, images: Sequence[np.ndarray]) -> None:
        self._images = images
        self._iterator: Iterator[np.ndarray] = iter(images)

    def get_next(self) -> dict[str, np.ndarray] | None:
        image = next(self._iterator, None)
        return None if image is None else {IMAGE.name: np.ascontiguousarray(image)}

    def rewind(self) -> None:
        self._iterator = iter(self._images)

    def __len__(self) -> int:
        return len(self._images)


def _select_nodes(model: Any, plan: QuantizationPlan) -> tuple[list[str], list[str]]:
    """``(names to quantize, names kept float)`` among nodes of the plan's operator types."""
    quantize, keep = [], []
    for node in model.graph.node:
        if node.op_type not in plan.op_types:
            continue
        if any(fnmatch.fnmatchcase(node.name, pattern) for pattern in plan.keep_float):
            keep.append(node.name)
        else:
            quantize.append(node.name)
    return quantize, keep


def _check_images(images: Sequence[np.ndarray]) -> None:
    if not images:
        raise ConfigError("INT8 calibration needs at least one image, got none")
    for index, image in enumerate(images):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise ConfigError(
                f"calibration image {index}: expected a uint8 3xHxW array, got "
                f"{image.dtype} {tuple(image.shape)}"
            )


def quantize_int8(
    fp32_path: Path,
    int8_path: Path,
    images: Sequence[np.ndarray],
    plan: QuantizationPlan = DEFAULT_PLAN,
) -> QuantizationRecord:
    """Write the INT8 (QDQ) version of the graph at ``fp32_path`` to ``int8_path``.

    Args:
        fp32_path: the exported FP32 graph.
        int8_path: where the quantized graph goes (overwritten).
        images: calibration images, uint8 CHW, as the graph's ``image`` input takes them
            (training images: the accuracy gate evaluates on the validation split).
        plan: which nodes to quantize (:data:`DEFAULT_PLAN` by default).

    Raises:
        ConfigError: no calibration image, or one that is not uint8 3×H×W.
        ExportError: onnxruntime's quantizer failed, or no node matched the plan.
    """
    import onnx
    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    _check_images(images)
    model = onnx.load(str(fp32_path))
    to_quantize, kept = _select_nodes(model, plan)
    if not to_quantize:
        raise ExportError(
            f"no node of types {', '.join(plan.op_types)} is left to quantize in {fp32_path} "
            f"(kept float: {len(kept)})"
        )
    counts = Counter(n.op_type for n in model.graph.node if n.name in set(to_quantize))
    try:
        quantize_static(
            str(fp32_path),
            str(int8_path),
            _ImageReader(images),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(plan.op_types),
            nodes_to_quantize=to_quantize,
            per_channel=plan.per_channel,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, plan.calibration_method),
            calibration_providers=["CPUExecutionProvider"],
            # Not CalibMaxIntermediateOutputs: onnxruntime 1.31 drops the ranges collected
            # before each flush. Without it memory stays small anyway: the calibration graph
            # returns one min and one max per tensor and image, not the tensors.
        )
    except Exception as error:  # the quantizer raises many unrelated types
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ExportError(f"onnxruntime's INT8 quantization of {fp32_path} failed: {first}") from (
            error
        )
    logger.info(
        "quantized %s to INT8: %s; kept float: %d node(s)",
        fp32_path.name,
        ", ".join(f"{op} {n}" for op, n in sorted(counts.items())),
        len(kept),
    )
    return QuantizationRecord(
        plan=plan,
        quantized_nodes=dict(sorted(counts.items())),
        kept_float=tuple(kept),
        calibration_images=len(images),
        calibration_sizes=tuple((int(i.shape[2]), int(i.shape[1])) for i in images),
        onnxruntime=onnxruntime.__version__,
    )
