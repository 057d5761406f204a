"""Model builders: predictor sized for the dataset, small architectures, config validation."""

from __future__ import annotations

import pytest
import torch

from detstack.errors import ConfigError
from training.models import ModelConfig, build_model


def _config(architecture: str, **changes) -> ModelConfig:
    return ModelConfig(
        architecture=architecture, weights="none", weights_backbone="none", **changes
    )


@pytest.mark.parametrize("architecture", ["tiny", "quickstart"])
def test_small_architectures_predict_k_plus_background_classes(architecture):
    model = build_model(_config(architecture), num_classes=4)
    assert model.roi_heads.box_predictor.cls_score.out_features == 4
    assert model.roi_heads.box_predictor.bbox_pred.out_features == 16
    model.eval()
    with torch.no_grad():
        (output,) = model([torch.rand(3, 50, 70)])
    assert set(output) == {"boxes", "scores", "labels"}


def test_tiny_model_is_small_enough_for_fast_plumbing_tests():
    model = build_model(_config("tiny"), num_classes=2)
    assert sum(p.numel() for p in model.parameters()) < 5_000_000
    assert model.transform.min_size == (64,)


def test_min_size_overrides_the_architecture_default():
    model = build_model(_config("tiny", min_size=96, max_size=96), num_classes=2)
    assert model.transform.min_size == (96,) and model.transform.max_size == 96


def test_trainable_backbone_layers_freezes_the_early_stages():
    model = build_model(_config("quickstart", trainable_backbone_layers=2), num_classes=2)
    body = model.backbone.body
    assert not any(p.requires_grad for p in body.conv1.parameters())
    assert not any(p.requires_grad for p in body.layer2.parameters())
    assert all(p.requires_grad for p in body.layer3.parameters())


def test_torchvision_architecture_gets_a_predictor_for_the_dataset():
    model = build_model(_config("fasterrcnn_mobilenet_v3_large_320_fpn"), num_classes=3)
    assert model.roi_heads.box_predictor.cls_score.out_features == 3


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"architecture": "yolo"}, "unknown architecture 'yolo'"),
        ({"min_size": 8}, "min_size must be at least 16"),
        ({"box_score_thresh": 1.5}, "box_score_thresh"),
    ],
)
def test_invalid_model_config_names_the_bad_value(changes, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**changes)


def test_fewer_than_two_classes_is_refused():
    with pytest.raises(ConfigError, match="num_classes must be at least 2"):
        build_model(_config("tiny"), num_classes=1)


def test_model_config_round_trips_through_a_plain_dict():
    config = _config("quickstart", min_size=112)
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="invalid model config"):
        ModelConfig.from_dict({"architecture": "tiny", "colour": "red"})
