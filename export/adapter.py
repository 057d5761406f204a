"""The export adapter: a detector as one tensors-in, tensors-out function of a uint8 image.

torchvision's detectors take a list of float images and return a list of dicts with training
labels (1..K). A served model needs the opposite of every one of those choices: one tensor in,
named tensors out, and the dataset's own category ids. :class:`DetectionAdapter` is the explicit
bridge; everything it does is traced into the ONNX graph, so the server and PyTorch run the same
steps:

1. ``uint8`` CHW image → ``float32`` in ``[0, 1]``;
2. the detector itself: its own ``GeneralizedRCNNTransform`` (resize + normalise), backbone,
   RPN, box head and post-processing (boxes scaled back to the input image's pixels);
3. training labels → dataset category ids through a lookup tensor baked into the graph.

It works when no box survives (``N = 0``): every output is then an empty tensor.

Example:
    >>> checkpoint = load_checkpoint("runs/exp/checkpoint.pt")      # doctest: +SKIP
    >>> adapter = adapter_from_checkpoint(checkpoint)               # doctest: +SKIP
    >>> boxes, scores, labels = adapter(torch.zeros(3, 480, 640, dtype=torch.uint8))
    ...                                                              # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from detstack.errors import ExportError
from training.checkpoint import Checkpoint, build_trained_model

__all__ = [
    "DetectionAdapter",
    "adapter_from_checkpoint",
    "detector_resize",
    "non_finite_parameters",
]


class DetectionAdapter(nn.Module):
    """uint8 CHW image → (boxes FP32 N×4, scores FP32 N, dataset category ids INT64 N)."""

    def __init__(self, detector: nn.Module, dataset_ids: Sequence[int]) -> None:
        super().__init__()
        self.detector = detector.eval()
        # Row 0 stands for the background label, which a detector never returns.
        lookup = torch.tensor([-1, *dataset_ids], dtype=torch.int64)
        self.register_buffer("dataset_ids", lookup, persistent=False)
        #: Scale to ``[0, 1]`` here, before the detector's transform. Export turns it off while
        #: tracing (:func:`export._late_normalise.normalise_after_resize` scales after the
        #: resize instead); the eager reference always keeps it on.
        self.scale_first = True

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pixels = image.float()
        if self.scale_first:
            pixels = pixels / 255.0
        detections = self.detector([pixels])[0]
        labels = self.dataset_ids[detections["labels"]]
        return detections["boxes"], detections["scores"], labels


def detector_resize(adapter: DetectionAdapter) -> tuple[int, int]:
    """``(min_size, max_size)`` of the detector's own resize (its ``GeneralizedRCNNTransform``)."""
    transform = adapter.detector.transform
    min_size = transform.min_size
    shorter = int(min_size[-1] if isinstance(min_size, (tuple, list)) else min_size)
    return shorter, int(transform.max_size)


def non_finite_parameters(state: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors of ``state`` holding NaN or infinity."""
    return [
        name
        for name, value in state.items()
        if isinstance(value, torch.Tensor)
        and value.is_floating_point()
        and not bool(torch.isfinite(value).all())
    ]


def adapter_from_checkpoint(checkpoint: Checkpoint) -> DetectionAdapter:
    """Rebuild the trained detector of ``checkpoint`` (no download) and wrap it for export.

    Raises:
        ExportError: the checkpoint holds NaN or infinite weights (every such tensor named).
        CheckpointError: the weights do not fit the network the checkpoint describes.
    """
    bad = non_finite_parameters(checkpoint.model_state)
    if bad:
        shown = ", ".join(bad[:20]) + (f", ... ({len(bad) - 20} more)" if len(bad) > 20 else "")
        raise ExportError(
            f"the checkpoint has non-finite values (NaN or inf) in {len(bad)} tensor(s): {shown}; "
            "it cannot be exported (retrain, or export an earlier checkpoint)"
        )
    detector = build_trained_model(checkpoint)
    return DetectionAdapter(detector, checkpoint.category_map.dataset_ids).eval()
