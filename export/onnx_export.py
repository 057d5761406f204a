"""Trace the export adapter to ONNX, check the graph, and describe what was produced.

We use ``torch.onnx.export`` with the TorchScript-based exporter (``dynamo=False``), the path
torchvision's own ONNX tests take for Faster R-CNN. The dynamo exporter of torch 2.14 cannot
export torchvision's detectors: ``torch.export`` stops at a data-dependent guard in batched NMS
(``GuardOnDataDependentSymNode`` in ``_batched_nms_coordinate_trick``).

Tensor names, dtypes and dynamic axes come from :mod:`detstack.contract`: the image's height and
width and the number of detections are dynamic.

**Opset.** The default, :data:`DEFAULT_OPSET` (15), is the highest opset at which torchvision
still emits ``RoiAlign`` in its opset-10 form. ONNX Runtime releases before 2026 have a CUDA
``RoiAlign`` kernel only for that form; from opset 16 the node becomes ``RoiAlign-16`` and those
releases run it on the CPU, copying feature maps between GPU and host for every image.
:func:`inspect_graph` reports the form every ``RoiAlign`` node has.

**Level merge.** The export traces torchvision's FPN RoIAlign merge in a cheaper form with the
same values (:mod:`export._roi_merge`), for the duration of the export only.

Example:
    >>> info = export_onnx(adapter, Path("model.onnx"), opset=15, example=image)  # doctest: +SKIP
    >>> info.roi_align                                                       # doctest: +SKIP
    ('RoiAlign-10',)
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from detstack.contract import GRAPH_INPUTS, OUTPUTS
from detstack.errors import ExportError
from export._late_normalise import normalise_after_resize
from export._roi_align import small_map_roi_align
from export._roi_merge import cheap_level_merge

__all__ = [
    "DEFAULT_OPSET",
    "MAX_OPSET",
    "MIN_OPSET",
    "GraphInfo",
    "export_onnx",
    "inspect_graph",
]

logger = logging.getLogger(__name__)

#: torchvision exports detection models from opset 11 (dynamic Resize, NonMaxSuppression).
MIN_OPSET = 11
#: The highest opset the TorchScript-based exporter of torch 2.14 writes.
MAX_OPSET = 20
#: The highest opset whose RoiAlign node still has the opset-10 form (CUDA kernel everywhere).
DEFAULT_OPSET = 15

_ONNX_TYPES = {1: "FP32", 2: "UINT8", 7: "INT64", 6: "INT32", 10: "FP16", 11: "FP64"}


@dataclass(frozen=True)
class TensorInfo:
    """One graph input or output as ONNX declares it (``-1`` for a named, dynamic dimension)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class GraphInfo:
    """What the exported graph is: opset, inputs/outputs, size, and the form of its RoiAlign."""

    opset: int
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    nodes: int
    roi_align: tuple[str, ...]
    #: ``MatMul`` nodes of the box head's RoI pooling: the matrix form of RoIAlign that the
    #: export writes for FPN levels with small maps (:mod:`export._roi_align`).
    pooling_matmuls: int = 0

    @property
    def roi_pooling(self) -> str:
        """How the box head pools: ``RoiAlign``, ``matrix products``, or both (per level)."""
        forms = [
            name
            for name, present in (
                ("RoiAlign", bool(self.roi_align)),
                ("matrix products", self.pooling_matmuls > 0),
            )
            if present
        ]
        return " and ".join(forms) or "none"

    def to_dict(self) -> dict[str, Any]:
        return {
            "opset": self.opset,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "nodes": self.nodes,
            "roi_align": list(self.roi_align),
            "roi_pooling": self.roi_pooling,
        }


def _tensor_info(value: Any) -> TensorInfo:
    tensor_type = value.type.tensor_type
    shape = tuple(
        -1 if dim.dim_param or not dim.HasField("dim_value") else int(dim.dim_value)
        for dim in tensor_type.shape.dim
    )
    datatype = _ONNX_TYPES.get(tensor_type.elem_type, f"onnx-type-{tensor_type.elem_type}")
    return TensorInfo(value.name, datatype, shape)


def _roi_align_since_version(opset: int) -> int:
    return 16 if opset >= 16 else 10


def inspect_graph(model: Any) -> GraphInfo:
    """Describe an ``onnx.ModelProto`` (or the path of one)."""
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    roi_forms = []
    for node in model.graph.node:
        if node.op_type == "RoiAlign" and node.domain in ("", "ai.onnx"):
            attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            mode = attributes.get("coordinate_transformation_mode", b"output_half_pixel")
            form = f"RoiAlign-{_roi_align_since_version(opset)}"
            if isinstance(mode, bytes) and mode != b"output_half_pixel":
                form += f" ({mode.decode()})"
            roi_forms.append(form)
    pooling_matmuls = sum(
        1 for node in model.graph.node if node.op_type == "MatMul" and "/box_roi_pool/" in node.name
    )
    return GraphInfo(
        opset=opset,
        inputs=tuple(_tensor_info(v) for v in model.graph.input),
        outputs=tuple(_tensor_info(v) for v in model.graph.output),
        nodes=len(model.graph.node),
        roi_align=tuple(roi_forms),
        pooling_matmuls=pooling_matmuls,
    )


def _check_contract(info: GraphInfo) -> None:
    """The graph must expose exactly the contract's tensors; anything else is an export bug."""
    problems = []
    for kind, expected, found in (
        ("input", GRAPH_INPUTS, info.inputs),
        ("output", OUTPUTS, info.outputs),
    ):
        wanted = [(s.name, s.datatype, len(s.shape)) for s in expected]
        got = [(t.name, t.datatype, len(t.shape)) for t in found]
        if wanted != got:
            problems.append(f"{kind}s are {got}, expected {wanted} (name, dtype, rank)")
    if problems:
        raise ExportError("the exported graph breaks the tensor contract: " + "; ".join(problems))


def export_onnx(
    adapter: torch.nn.Module,
    path: Path,
    *,
    opset: int = DEFAULT_OPSET,
    example: torch.Tensor,
    metadata: dict[str, str] | None = None,
) -> GraphInfo:
    """Export ``adapter`` to ``path``, run the ONNX checker, and describe the graph.

    Args:
        adapter: the :class:`~export.adapter.DetectionAdapter` (in eval mode).
        path: the ``.onnx`` file to write.
        opset: ONNX opset, :data:`MIN_OPSET`..:data:`MAX_OPSET`.
        example: a uint8 CHW image to trace with (any size: the axes are dynamic).
        metadata: ``metadata_props`` stored in the model (label map, provenance keys).

    Raises:
        ExportError: unsupported opset, the exporter or the ONNX checker failed, or the graph's
            inputs/outputs differ from the contract.
    """
    import onnx
    import torch

    from export.adapter import detector_resize

    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"opset {opset} is not supported; expected {MIN_OPSET}..{MAX_OPSET}")
    if opset >= 16:
        logger.warning(
            "opset %d writes RoiAlign-16: ONNX Runtime's CUDA provider before 2026 releases has "
            "no kernel for it and runs it on the CPU; use --opset 15 for GPU serving",
            opset,
        )
    dynamic_axes = {spec.name: spec.dynamic_axes for spec in (*GRAPH_INPUTS, *OUTPUTS)}
    buffer = io.BytesIO()
    adapter.eval()
    try:
        # cheap_level_merge: torchvision's per-level RoIAlign merge as one Concat + Gather instead
        # of one full-size ScatterElements per FPN level (same values; restored on exit).
        # normalise_after_resize: scale and normalise the working-size image, not the original.
        # small_map_roi_align: RoIAlign as two matrix products on FPN levels whose map is small.
        with (
            torch.no_grad(),
            warnings.catch_warnings(),
            cheap_level_merge(),
            normalise_after_resize(adapter),
            small_map_roi_align(detector_resize(adapter)[1]),
        ):
            # The tracer warns about every Python-level shape computation in torchvision's
            # detection code; the parity gate, not these warnings, tells whether they matter.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                adapter,
                (example,),
                buffer,
                dynamo=False,
                opset_version=opset,
                input_names=[spec.name for spec in GRAPH_INPUTS],
                output_names=[spec.name for spec in OUTPUTS],
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )
    except Exception as error:  # the exporter raises many unrelated types
        raise ExportError(f"torch.onnx.export failed at opset {opset}: {error}") from error
    model = onnx.load_from_string(buffer.getvalue())
    model.doc_string = "detstack detector: uint8 CHW image -> boxes, scores, dataset category ids"
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as error:
        raise ExportError(f"the ONNX checker rejected the exported graph: {error}") from None
    info = inspect_graph(model)
    _check_contract(info)
    path = Path(path)
    path.write_bytes(model.SerializeToString())
    logger.info(
        "exported %s: opset %d, %d nodes, RoI pooling by %s (RoiAlign forms %s)",
        path.name,
        info.opset,
        info.nodes,
        info.roi_pooling,
        ", ".join(sorted(set(info.roi_align))) or "none",
    )
    return info
