"""Model builders: every supported Faster R-CNN, its box predictor sized for the dataset.

One frozen :class:`ModelConfig` names the architecture, the weights to start from and the
inference settings. :func:`build_model` turns it into a ``torchvision`` ``FasterRCNN`` whose box
predictor has ``num_classes`` outputs (K dataset categories + background). The same config is
stored in every checkpoint (pinned by :meth:`ModelConfig.for_rebuild`), so export rebuilds
exactly the trained network without fetching any weights.

Architectures:

* ``fasterrcnn_resnet50_fpn`` (default, as in the seed), ``fasterrcnn_resnet50_fpn_v2``,
  ``fasterrcnn_mobilenet_v3_large_fpn``, ``fasterrcnn_mobilenet_v3_large_320_fpn``;
* ``quickstart``: a Faster R-CNN on ResNet-18 (stages 1-3) with a 128-channel FPN at 128 px,
  anchors of 16-96 px and a 256-wide box head: it learns the synthetic shapes from scratch in
  minutes on 2 CPU cores;
* ``tiny``: the same idea at 64 px with a 64-channel FPN (~3.3 M parameters), for tests about
  plumbing, not accuracy.

A backbone trained from scratch gets live ``BatchNorm2d``; a pretrained one gets torchvision's
``FrozenBatchNorm2d`` (``ModelConfig.frozen_batch_norm`` overrides the choice).

Example:
    >>> config = ModelConfig(architecture="tiny", weights="none", weights_backbone="none")
    >>> model = build_model(config, num_classes=3)
    >>> model.roi_heads.box_predictor.cls_score.out_features
    3
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from detstack.errors import ConfigError, WeightsError

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


@dataclass(frozen=True)
class _SmallSpec:
    """The knobs of the small ResNet-18-FPN detectors (not user configuration)."""

    size: int
    returned_layers: tuple[int, ...]
    fpn_channels: int
    anchor_sizes: tuple[tuple[int, ...], ...]
    aspect_ratios: tuple[float, ...]
    representation_size: int
    rpn_pre_nms_train: int
    rpn_post_nms_train: int
    rpn_pre_nms_test: int
    rpn_post_nms_test: int
    rpn_batch_size_per_image: int
    box_batch_size_per_image: int


_SMALL_ARCHITECTURES = {
    # 128 px, objects of ~10-90 px: three ResNet stages + pool, thin FPN and box head so a
    # step costs little on a CPU while keeping enough capacity for a handful of categories.
    "quickstart": _SmallSpec(
        size=128,
        returned_layers=(2, 3),
        fpn_channels=128,
        anchor_sizes=((16, 24), (32, 48), (64, 96)),
        aspect_ratios=(0.5, 1.0, 2.0),
        representation_size=256,
        rpn_pre_nms_train=600,
        rpn_post_nms_train=300,
        rpn_pre_nms_test=300,
        rpn_post_nms_test=100,
        rpn_batch_size_per_image=256,
        box_batch_size_per_image=64,
    ),
    # 64 px, layer4 cut off (~3.5 M parameters, a ~14 MB checkpoint): plumbing tests only.
    "tiny": _SmallSpec(
        size=64,
        returned_layers=(2, 3),
        fpn_channels=64,
        anchor_sizes=((8, 16), (24, 32), (48, 64)),
        aspect_ratios=(0.5, 1.0, 2.0),
        representation_size=128,
        rpn_pre_nms_train=200,
        rpn_post_nms_train=100,
        rpn_pre_nms_test=100,
        rpn_post_nms_test=50,
        rpn_batch_size_per_image=128,
        box_batch_size_per_image=64,
    ),
}


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
        frozen_batch_norm: backbone batch norm with fixed statistics (``FrozenBatchNorm2d``)
            instead of live ``BatchNorm2d``. ``None`` (default) decides by the weights: frozen
            when starting from pretrained weights (as torchvision does), live from scratch.
            :meth:`for_rebuild` pins it, so a checkpoint rebuilds the same layers offline.
    """

    architecture: str = "fasterrcnn_resnet50_fpn"
    weights: str = "DEFAULT"
    weights_backbone: str = "DEFAULT"
    min_size: int | None = None
    max_size: int | None = None
    trainable_backbone_layers: int | None = None
    box_score_thresh: float = 0.05
    box_detections_per_img: int = 100
    frozen_batch_norm: bool | None = None

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

    @property
    def uses_frozen_batch_norm(self) -> bool:
        """Whether the backbone's batch norm is frozen (see ``frozen_batch_norm``)."""
        if self.frozen_batch_norm is not None:
            return self.frozen_batch_norm
        if self.architecture == "fasterrcnn_resnet50_fpn_v2":
            return False  # torchvision trains v2 with live batch norm even when pretrained
        return self.weights.lower() != "none" or self.weights_backbone.upper() == "DEFAULT"

    def for_rebuild(self) -> ModelConfig:
        """This config with no weights to fetch and the layer choices pinned.

        The trainer stores this in checkpoints: ``build_model`` on it creates exactly the trained
        network's layers without any download, ready for ``load_state_dict``.
        """
        return replace(
            self,
            weights="none",
            weights_backbone="none",
            frozen_batch_norm=self.uses_frozen_batch_norm,
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
    import torch.nn as nn
    from torchvision.models import resnet18
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign
    from torchvision.ops.misc import FrozenBatchNorm2d

    spec = _SMALL_ARCHITECTURES[config.architecture]
    backbone_weights = None
    if config.weights_backbone.upper() == "DEFAULT" and config.weights.lower() == "none":
        from training._weights import resolve_backbone_weights

        backbone_weights = resolve_backbone_weights("resnet18")
    # Pretrained statistics are frozen (as torchvision does); a backbone trained from scratch
    # needs live batch norm, or its activations never get normalised and it learns far slower.
    norm_layer = FrozenBatchNorm2d if config.uses_frozen_batch_norm else nn.BatchNorm2d
    body = resnet18(weights=backbone_weights, norm_layer=norm_layer)
    trainable = 5 if config.trainable_backbone_layers is None else config.trainable_backbone_layers
    if not 0 <= trainable <= 5:
        raise ConfigError(f"trainable_backbone_layers must be in 0..5, got {trainable}")
    trainable_names = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable]
    if trainable == 5:
        trainable_names.append("bn1")
    for name, parameter in body.named_parameters():
        if all(not name.startswith(layer) for layer in trainable_names):
            parameter.requires_grad_(False)
    # Stages after the last returned one are cut off by BackboneWithFPN (tiny drops layer4).
    return_layers = {f"layer{k}": str(i) for i, k in enumerate(spec.returned_layers)}
    channels = {1: 64, 2: 128, 3: 256, 4: 512}
    backbone = BackboneWithFPN(
        body,
        return_layers=return_layers,
        in_channels_list=[channels[k] for k in spec.returned_layers],
        out_channels=spec.fpn_channels,
    )
    levels = len(spec.returned_layers) + 1  # + the max-pool level FPN adds
    if len(spec.anchor_sizes) != levels:  # pragma: no cover - a programming error in the spec
        raise ConfigError(f"{config.architecture}: {len(spec.anchor_sizes)} anchor levels")
    anchors = AnchorGenerator(sizes=spec.anchor_sizes, aspect_ratios=(spec.aspect_ratios,) * levels)
    roi_pool = MultiScaleRoIAlign(
        featmap_names=[str(i) for i in range(len(spec.returned_layers))],
        output_size=7,
        sampling_ratio=2,
    )
    box_head = TwoMLPHead(spec.fpn_channels * 7 * 7, spec.representation_size)
    return FasterRCNN(
        backbone,
        num_classes=None,
        min_size=config.min_size or spec.size,
        max_size=config.max_size or spec.size,
        rpn_anchor_generator=anchors,
        box_roi_pool=roi_pool,
        box_head=box_head,
        box_predictor=FastRCNNPredictor(spec.representation_size, num_classes),
        rpn_pre_nms_top_n_train=spec.rpn_pre_nms_train,
        rpn_post_nms_top_n_train=spec.rpn_post_nms_train,
        rpn_pre_nms_top_n_test=spec.rpn_pre_nms_test,
        rpn_post_nms_top_n_test=spec.rpn_post_nms_test,
        rpn_batch_size_per_image=spec.rpn_batch_size_per_image,
        box_batch_size_per_image=spec.box_batch_size_per_image,
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
        if config.weights.lower() == "default":
            raise WeightsError(
                f"architecture {config.architecture!r} has no COCO-pretrained weights; pass "
                f"--weights none (with --weights-backbone DEFAULT for an ImageNet backbone, or "
                f"none) or --weights PATH"
            )
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
        # Replace the COCO (91-class) predictor with one for the dataset's categories.
        in_features = model.roi_heads.box_predictor.cls_score.in_features
        model.roi_heads.box_predictor = FastRCNNPredictor(in_features, num_classes)
        return model
    backbone = None
    if config.weights_backbone.upper() == "DEFAULT" and weights_mode == "none":
        from training._weights import resolve_backbone_weights

        backbone = resolve_backbone_weights(config.architecture)
    model = builder(weights=None, weights_backbone=backbone, num_classes=num_classes, **kwargs)
    if backbone is None and config.uses_frozen_batch_norm:
        _freeze_batch_norm(model.backbone.body)
    if weights_mode != "none":
        # After the predictor has its final size: a file trained on the same categories keeps
        # its predictor, one trained on others (COCO's 91) loses only the predictor.
        load_detector_file(model, config.weights)
    return model


def _freeze_batch_norm(module: Any) -> None:
    """Swap every ``BatchNorm2d`` under ``module`` for a ``FrozenBatchNorm2d`` (in place)."""
    import torch.nn as nn
    from torchvision.ops.misc import FrozenBatchNorm2d

    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            _freeze_batch_norm(child)
