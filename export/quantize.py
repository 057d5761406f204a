"""INT8 static quantization of an exported detector graph (onnxruntime, QDQ format).

:func:`quantize_int8` is a pure function: the FP32 graph's path, calibration images and a
:class:`QuantizationPlan` in, the INT8 graph written to a path and a :class:`QuantizationRecord`
(what was quantized, what stayed float, on what it was calibrated) out.

What is quantized and what stays float was decided by measurement (benchmarks/
quantize_probe.py, benchmarks/precision_bench.py, figures in benchmarks/results/README.md):
only the compute-heavy convolutions and matrix products (``Conv``, ``Gemm``, ``MatMul``) and
the ``Relu`` after them are quantized, weights per output channel (int8, symmetric) and
activations per tensor (**uint8**, asymmetric, calibrated by min/max over the calibration
images). Every other operator runs in float: the transform's
resize and normalisation, anchor decoding, NMS, RoiAlign (and the two matrix products that
replace it on small maps, :mod:`export._roi_align`: :data:`FLOAT_POOLING`), TopK and the box
post-processing, so boxes are computed and clipped in float. The default plan also keeps
float the last layers whose outputs *are* numbers the detector decodes: the RPN head's
objectness and box-delta convolutions and the box predictor's class and box-regression layers
(:data:`DEFAULT_PLAN`).

Why uint8 activations and a quantized ``Relu``: a QDQ graph is only fast if onnxruntime fuses
each ``DequantizeLinear -> Conv -> QuantizeLinear`` group into one ``QLinearConv`` (an integer
kernel). On x86 its CPU provider does that for uint8 activations with int8 weights (U8S8; the
VNNI ``vpdpbusd`` instruction, no saturation); int8 activations are converted to uint8 only
where a Q/DQ pair stands alone, and every other convolution runs as a float ``Conv`` between
quantize/dequantize passes, slower than the FP32 graph. With int8 activations 6 of the
quickstart's 22 quantized convolutions were fused (INT8 0.99x FP32, ResNet-50 0.72x); with
uint8 and the ``Relu`` quantized (the quantizer folds it into the convolution's output range)
all 22 are. :func:`fused_kernels` counts them in onnxruntime's optimised graph and the count
goes into the record.

Why :func:`inline_constant_aliases` first: the TorchScript exporter stores equal initializers
once and hands the copies out through ``Identity`` nodes. In a ResNet-50 with fresh (or
zero-shift) batch norms many folded convolution biases are equal, so the convolution's bias
is an ``Identity`` output, which the quantizer does not quantize (it wants an initializer),
and onnxruntime fuses no group whose bias is float: 6 of 66 on ``fasterrcnn_resnet50_fpn``.
Rewiring each alias to its initializer (the quantizer then gives every convolution its own
bias copy) is exact and lets all of them fuse.

The calibration images go into the graph's own ``image`` input (uint8 CHW), so they are
resized and normalised exactly as served images are.

Example:
    >>> record = quantize_int8(Path("model.onnx"), Path("model.int8.onnx"), images)
    ...                                                                     # doctest: +SKIP
    >>> record.quantized_nodes                                              # doctest: +SKIP
    {'Conv': 22, 'Gemm': 2, 'Relu': 18}
    >>> record.fused["QLinearConv"]                                         # doctest: +SKIP
    22
"""

from __future__ import annotations

import fnmatch
import logging
import tempfile
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
    "FLOAT_POOLING",
    "QuantizationPlan",
    "QuantizationRecord",
    "fused_kernels",
    "inline_constant_aliases",
    "quantize_int8",
]

logger = logging.getLogger(__name__)

#: Node-name patterns of the layers whose outputs the detector decodes into boxes and scores.
FLOAT_HEADS: tuple[str, ...] = (
    "/detector/rpn/head/cls_logits*",
    "/detector/rpn/head/bbox_pred*",
    "/detector/roi_heads/box_predictor/*",
)

#: Node-name patterns of the box head's RoI pooling. On small maps the export writes it as
#: ``MatMul`` nodes (:mod:`export._roi_align`) whose inputs are both activations (the feature map
#: and the bilinear weights): it stays float, as the RoiAlign it replaces does.
FLOAT_POOLING: tuple[str, ...] = ("/detector/roi_heads/box_roi_pool/*",)

_CALIBRATION_METHODS = ("MinMax", "Percentile", "Entropy")
_ACTIVATION_TYPES = ("uint8", "int8")
#: Operator types of onnxruntime's optimised graph that :func:`fused_kernels` counts.
_KERNELS = ("QLinearConv", "ConvInteger", "Conv", "FusedConv", "QGemm", "QLinearMatMul", "Gemm")


@dataclass(frozen=True)
class QuantizationPlan:
    """Which nodes are quantized, and how.

    Attributes:
        op_types: operator types to quantize; every other operator stays float. ``Relu`` is
            there so that the quantizer folds it into the preceding convolution (else the
            convolution's output is quantized, dequantized for a float ``Relu`` and quantized
            again, and onnxruntime cannot fuse the group).
        keep_float: ``fnmatch`` patterns of node names kept float even when their type is in
            ``op_types``.
        per_channel: one weight scale per output channel (else one per tensor).
        calibration_method: ``MinMax``, ``Percentile`` or ``Entropy`` (onnxruntime's names).
        activation_type: ``uint8`` (asymmetric; the type onnxruntime's x86 integer kernels
            take, see the module docstring) or ``int8`` (symmetric; only partly fused on x86).
        reduce_range: 7-bit weights, for x86 CPUs without VNNI, where U8S8 products can
            saturate (onnxruntime's advice); not needed with AVX-512 VNNI or AVX-VNNI.
    """

    op_types: tuple[str, ...] = ("Conv", "Gemm", "MatMul", "Relu")
    keep_float: tuple[str, ...] = (*FLOAT_HEADS, *FLOAT_POOLING)
    per_channel: bool = True
    calibration_method: str = "MinMax"
    activation_type: str = "uint8"
    reduce_range: bool = False

    def __post_init__(self) -> None:
        if not self.op_types:
            raise ConfigError("a quantization plan needs at least one operator type to quantize")
        if self.calibration_method not in _CALIBRATION_METHODS:
            raise ConfigError(
                f"unknown calibration method {self.calibration_method!r}; expected one of "
                f"{', '.join(_CALIBRATION_METHODS)}"
            )
        if self.activation_type not in _ACTIVATION_TYPES:
            raise ConfigError(
                f"unknown activation type {self.activation_type!r}; expected one of "
                f"{', '.join(_ACTIVATION_TYPES)}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "op_types": list(self.op_types),
            "keep_float": list(self.keep_float),
            "per_channel": self.per_channel,
            "calibration_method": self.calibration_method,
            "weights": "int8, symmetric"
            + (", per channel" if self.per_channel else "")
            + (", reduced range (7 bit)" if self.reduce_range else ""),
            "activations": f"{self.activation_type}, "
            + ("asymmetric" if self.activation_type == "uint8" else "symmetric")
            + ", per tensor",
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
    fused: dict[str, int] = field(default_factory=dict)
    aliases_inlined: int = 0
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
            "onnxruntime_kernels": dict(self.fused),
            "identity_aliases_inlined": self.aliases_inlined,
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


def _subgraph_inputs(graph: Any) -> set[str]:
    """Every name the nodes of ``graph``'s subgraphs (at any depth) read."""
    names: set[str] = set()
    for node in graph.node:
        for attribute in node.attribute:
            for subgraph in [attribute.g, *attribute.graphs] if attribute.type in (5, 10) else []:
                for inner in subgraph.node:
                    names.update(inner.input)
                names |= _subgraph_inputs(subgraph)
    return names


def inline_constant_aliases(model: Any) -> int:
    """Make every node read initializers directly instead of through an ``Identity`` alias.

    Edits ``model`` (an ``onnx.ModelProto``) in place and returns how many aliases were
    removed. An ``Identity`` whose output is a graph output, or is read inside a subgraph
    (``If``/``Loop`` bodies see the outer scope by name), is left alone.
    """
    graph = model.graph
    initializers = {tensor.name for tensor in graph.initializer}
    outputs = {value.name for value in graph.output} | _subgraph_inputs(graph)
    aliases = {
        node.output[0]: node.input[0]
        for node in graph.node
        if node.op_type == "Identity"
        and node.input[0] in initializers
        and node.output[0] not in outputs
    }
    if not aliases:
        return 0
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name in aliases:
                node.input[index] = aliases[name]
    kept = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in aliases)]
    del graph.node[:]
    graph.node.extend(kept)
    return len(aliases)


def fused_kernels(path: Path) -> dict[str, int]:
    """How many convolution and matrix kernels of each type onnxruntime runs for ``path``.

    The graph is optimised as a served session optimises it (CPU provider; the QDQ fusions run
    at the extended level) and dumped to a scratch file. In a well-quantized graph the
    quantized convolutions appear as ``QLinearConv`` and only the plan's float ones as
    ``Conv``/``FusedConv``.

    Raises:
        ExportError: onnxruntime cannot load the graph.
    """
    import onnx
    import onnxruntime

    with tempfile.TemporaryDirectory(prefix="detstack-fused-") as scratch:
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(Path(scratch) / "optimised.onnx")
        try:
            onnxruntime.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
            graph = onnx.load(options.optimized_model_filepath).graph
        except Exception as error:  # onnxruntime raises its own unrelated types
            raise ExportError(f"onnxruntime cannot optimise {path}: {error}") from error
    counts = Counter(node.op_type for node in graph.node)
    return {op: counts[op] for op in _KERNELS if counts[op]}


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
    aliases = inline_constant_aliases(model)
    to_quantize, kept = _select_nodes(model, plan)
    if not to_quantize:
        raise ExportError(
            f"no node of types {', '.join(plan.op_types)} is left to quantize in {fp32_path} "
            f"(kept float: {len(kept)})"
        )
    counts = Counter(n.op_type for n in model.graph.node if n.name in set(to_quantize))
    try:
        quantize_static(
            model,
            str(int8_path),
            _ImageReader(images),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(plan.op_types),
            nodes_to_quantize=to_quantize,
            per_channel=plan.per_channel,
            activation_type=(
                QuantType.QUInt8 if plan.activation_type == "uint8" else QuantType.QInt8
            ),
            weight_type=QuantType.QInt8,
            reduce_range=plan.reduce_range,
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
    fused = fused_kernels(int8_path)
    logger.info(
        "quantized %s to INT8: %s; kept float: %d node(s); onnxruntime runs %s",
        fp32_path.name,
        ", ".join(f"{op} {n}" for op, n in sorted(counts.items())),
        len(kept),
        ", ".join(f"{op} {n}" for op, n in fused.items()),
    )
    if counts["Conv"] and fused.get("QLinearConv", 0) < counts["Conv"]:
        logger.warning(
            "onnxruntime fuses only %d of the %d quantized convolutions of %s into QLinearConv; "
            "the others run in float between quantize/dequantize passes (slower than FP32)",
            fused.get("QLinearConv", 0),
            counts["Conv"],
            int8_path.name,
        )
    return QuantizationRecord(
        plan=plan,
        quantized_nodes=dict(sorted(counts.items())),
        kept_float=tuple(kept),
        calibration_images=len(images),
        calibration_sizes=tuple((int(i.shape[2]), int(i.shape[1])) for i in images),
        onnxruntime=onnxruntime.__version__,
        fused=fused,
        aliases_inlined=aliases,
    )
