"""Finding pretrained weights: the torch hub cache, a download with a timeout, or a local file.

A download that cannot reach the internet must fail fast with a message that says where to put
the file by hand and what to pass instead, never hang.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from detstack.errors import WeightsError

logger = logging.getLogger(__name__)

_DETECTOR_WEIGHTS = {
    "fasterrcnn_resnet50_fpn": "FasterRCNN_ResNet50_FPN_Weights",
    "fasterrcnn_resnet50_fpn_v2": "FasterRCNN_ResNet50_FPN_V2_Weights",
    "fasterrcnn_mobilenet_v3_large_fpn": "FasterRCNN_MobileNet_V3_Large_FPN_Weights",
    "fasterrcnn_mobilenet_v3_large_320_fpn": "FasterRCNN_MobileNet_V3_Large_320_FPN_Weights",
}

_BACKBONE_WEIGHTS = {
    "fasterrcnn_resnet50_fpn": ("torchvision.models", "ResNet50_Weights"),
    "fasterrcnn_resnet50_fpn_v2": ("torchvision.models", "ResNet50_Weights"),
    "fasterrcnn_mobilenet_v3_large_fpn": ("torchvision.models", "MobileNet_V3_Large_Weights"),
    "fasterrcnn_mobilenet_v3_large_320_fpn": ("torchvision.models", "MobileNet_V3_Large_Weights"),
    "resnet18": ("torchvision.models", "ResNet18_Weights"),
}


def resolve_detector_weights(architecture: str) -> Any:
    """Return torchvision's DEFAULT weights enum for ``architecture``, its file present in cache."""
    import torchvision.models.detection as detection

    weights = getattr(detection, _DETECTOR_WEIGHTS[architecture]).DEFAULT
    ensure_cached(weights.url, what=f"COCO-pretrained {architecture}")
    return weights


def resolve_backbone_weights(architecture: str) -> Any:
    """Return the ImageNet DEFAULT weights enum of ``architecture``'s backbone, file cached."""
    import importlib

    module, name = _BACKBONE_WEIGHTS[architecture]
    weights = getattr(importlib.import_module(module), name).DEFAULT
    ensure_cached(weights.url, what=f"ImageNet-pretrained backbone of {architecture}")
    return weights


def ensure_cached(url: str, *, what: str, timeout: float = 20.0) -> Path:
    """Make sure ``url`` is in the torch hub cache, downloading it with a timeout if not."""
    import torch.hub

    target = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if target.exists():
        return target
    raise WeightsError(
        f"{what} weights are not in the cache ({target}) and downloading is not implemented "
        f"yet; pass --weights none"
    )


def load_detector_file(model: Any, path: str) -> None:
    """Load a whole-detector state dict from ``path`` into ``model`` (predictor excluded)."""
    raise WeightsError(f"loading weights from a file ({path}) is not implemented yet")
