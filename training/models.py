"""Model builders: every supported Faster R-CNN, its box predictor sized for the dataset.

One frozen :class:`ModelConfig` names the architecture, the weights to start from and the
inference settings. :func:`build_model` turns it into a ``torchvision`` ``FasterRCNN`` whose box
predictor has ``num_classes`` outputs (K dataset categories + background). The same config is
stored in every checkpoint, so export rebuilds exactly the trained network.

Architectures:

* ``fasterrcnn_resnet50_fpn`` (default, as in the seed), ``fasterrcnn_resnet50_fpn_v2``,
  ``fasterrcnn_mobilenet_v3_large_fpn``, ``fasterrcnn_mobilenet_v3_large_320_fpn``;
* ``quickstart``: a ResNet-18-FPN Faster R-CNN at 128 px that trains in minutes on 2 CPU cores;
* ``tiny``: the same at 64 px with a thin head, for tests about plumbing, not accuracy.

Example:
    >>> model = build_model(ModelConfig(architecture="tiny", weights="none"), num_classes=3)
    >>> model.roi_heads.box_predictor.cls_score.out_features
    3
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from detstack.errors import ConfigError

__all__ = ["ARCHITECTURES", "ModelConfig", "build_model"]

logger = logging.getLogger(__name__)

ARCHITECTURES: tuple[str, ...] = (
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    "quickstart",
    "tiny",
)

_SMALL_ARCHITECTURES = {"quickstart": 128, "tiny": 64}


@dataclass(frozen=True)
class ModelConfig:
    """What network to build and how it infers.

    Attributes:
        architecture: one of :data:`ARCHITECTURES`.
        weights: ``"DEFAULT"`` (COCO-pretrained, downloaded), ``"none"``, or a path to a
            ``.pth`` state dict of the whole detector.
        weights_backbone: ``"DEFAULT"`` (ImageNet-pretrained backbone) or ``"none"``; ignored
            when ``weights`` loads the whole detector.
        min_size: shorter image side after the model's resize; ``None`` keeps the
            architecture's default.
        max_size: longer side cap after resize; ``None`` keeps the architecture's default.
        trainable_backbone_layers: backbone stages left trainable (0-5); ``None`` = default.
        box_score_thresh: detections below this score are dropped by the model itself.
        box_detections_per_img: at most this many detections per image.
    """

    architecture: str = "fasterrcnn_resnet50_fpn"
    weights: str = "DEFAULT"
    weights_backbone: str = "DEFAULT"
    min_size: int | None = None
    max_size: int | None = None
    trainable_backbone_layers: int | None = None
    box_score_thresh: float = 0.05
    box_detections_per_img: int = 100

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(
                f"unknown architecture {self.architecture!r}; expected one of "
                f"{', '.join(ARCHITECTURES)}"
            )
        for name in ("min_size", "max_size"):
            value = getattr(self, name)
            if value is not None and value < 16:
                raise ConfigError(f"{name} must be at least 16 pixels, got {value}")
        if not 0.0 <= self.box_score_thresh < 1.0:
            raise ConfigError(f"box_score_thresh must be in [0, 1), got {self.box_score_thresh}")
        if self.box_detections_per_img < 1:
            raise ConfigError(
                f"box_detections_per_img must be at least 1, got {self.box_detections_per_img}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (loadable with ``torch.load(weights_only=True)``)."""
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        try:
            return cls(**data)
        except TypeError as error:
            raise ConfigError(f"invalid model config {data!r}: {error}") from None


def _small_model(config: ModelConfig, num_classes: int) -> Any:
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    size = _SMALL_ARCHITECTURES[config.architecture]
    backbone_weights = None
    if config.weights_backbone.upper() == "DEFAULT":
        from training._weights import resolve_backbone_weights

        backbone_weights = resolve_backbone_weights("resnet18")
    backbone = resnet_fpn_backbone(
        backbone_name="resnet18",
        weights=backbone_weights,
        trainable_layers=5
        if config.trainable_backbone_layers is None
        else config.trainable_backbone_layers,
        returned_layers=[2, 3, 4],
    )
    # Three pyramid levels (+ pool) at 128 px: objects of 8-100 px get anchors of their size.
    anchors = AnchorGenerator(
        sizes=((8, 16), (24, 32), (48, 64), (96, 128)),
        aspect_ratios=((0.5, 1.0, 2.0),) * 4,
    )
    tiny = config.architecture == "tiny"
    return FasterRCNN(
        backbone,
        num_classes=num_classes,
        min_size=config.min_size or size,
        max_size=config.max_size or size,
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=600 if not tiny else 200,
        rpn_post_nms_top_n_train=300 if not tiny else 100,
        rpn_pre_nms_top_n_test=300 if not tiny else 100,
        rpn_post_nms_top_n_test=100 if not tiny else 50,
        box_batch_size_per_image=128 if not tiny else 64,
        box_score_thresh=config.box_score_thresh,
        box_detections_per_img=config.box_detections_per_img,
    )


def build_model(config: ModelConfig, num_classes: int) -> Any:
    """Build the detector of ``config`` with a box predictor for ``num_classes`` classes.

    Args:
        config: the architecture, starting weights and inference settings.
        num_classes: K dataset categories + 1 for the background.

    Returns:
        A ``torchvision.models.detection.FasterRCNN`` in training mode.

    Raises:
        ConfigError: ``num_classes`` < 2.
        WeightsError: pretrained weights cannot be found or downloaded.
    """
    if num_classes < 2:
        raise ConfigError(f"num_classes must be at least 2 (background + 1), got {num_classes}")
    if config.architecture in _SMALL_ARCHITECTURES:
        model = _small_model(config, num_classes)
        if config.weights.lower() not in ("none", "default"):
            from training._weights import load_detector_file

            load_detector_file(model, config.weights)
        return model

    import torchvision.models.detection as detection
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

    from training._weights import load_detector_file, resolve_detector_weights

    builder = getattr(detection, config.architecture)
    kwargs: dict[str, Any] = {
        "box_score_thresh": config.box_score_thresh,
        "box_detections_per_img": config.box_detections_per_img,
    }
    if config.min_size is not None:
        kwargs["min_size"] = config.min_size
    if config.max_size is not None:
        kwargs["max_size"] = config.max_size
    if config.trainable_backbone_layers is not None:
        kwargs["trainable_backbone_layers"] = config.trainable_backbone_layers

    weights_mode = config.weights.lower()
    if weights_mode == "default":
        weights = resolve_detector_weights(config.architecture)
        model = builder(weights=weights, weights_backbone=None, **kwargs)
    else:
        backbone = None
        if config.weights_backbone.upper() == "DEFAULT" and weights_mode == "none":
            from training._weights import resolve_backbone_weights

            backbone = resolve_backbone_weights(config.architecture)
        model = builder(weights=None, weights_backbone=backbone, num_classes=91, **kwargs)
        if weights_mode != "none":
            load_detector_file(model, config.weights)
    # Replace the COCO (91-class) predictor with one for the dataset's categories.
    in_features = model.roi_heads.box_predictor.cls_score.in_features
    model.roi_heads.box_predictor = FastRCNNPredictor(in_features, num_classes)
    return model
