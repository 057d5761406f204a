"""Checkpoints: plain-data format, atomic writes, file mode, the shared tiny fixture."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import torch

from detstack.errors import CheckpointError
from tests.fixtures.models import TINY_DATASET_IDS, tiny_shape_image
from training.categories import CategoryMap
from training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from training.models import ModelConfig, build_model

TINY = ModelConfig(architecture="tiny", weights="none", weights_backbone="none")


def _checkpoint(**changes) -> Checkpoint:
    values = {
        "model_config": TINY,
        "category_map": CategoryMap((0, 3), ("a", "b")),
        "model_state": {"w": torch.arange(4.0)},
        "epoch": 2,
        "train_config": {"epochs": 3, "lr": 0.01, "lr_steps": [2]},
        "metrics": {"AP50": 0.5},
    }
    values.update(changes)
    return Checkpoint(**values)


def test_checkpoint_round_trips_every_field_through_weights_only_load(tmp_path):
    original = _checkpoint(optimizer_state={"state": {}, "param_groups": [{"lr": 0.1}]})
    path = save_checkpoint(original, tmp_path / "sub" / "last.pt")
    loaded = load_checkpoint(path)
    assert loaded.model_config == TINY
    assert loaded.category_map == original.category_map
    assert torch.equal(loaded.model_state["w"], original.model_state["w"])
    assert (loaded.epoch, loaded.train_config, loaded.metrics) == (
        2,
        original.train_config,
        {"AP50": 0.5},
    )
    assert loaded.optimizer_state == original.optimizer_state
    assert torch.load(path, weights_only=True)["format"] == "detstack.checkpoint/1"


def test_checkpoint_file_mode_follows_the_umask_not_mkstemp(tmp_path):
    previous = os.umask(0o022)
    try:
        path = save_checkpoint(_checkpoint(), tmp_path / "c.pt")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_failed_write_keeps_the_previous_checkpoint_and_leaves_no_temporary(tmp_path):
    path = save_checkpoint(_checkpoint(epoch=1), tmp_path / "last.pt")
    unpicklable = _checkpoint(epoch=2, extra={"bad": lambda: None})
    with pytest.raises(Exception):  # noqa: B017 - whatever torch.save raises for a lambda
        save_checkpoint(unpicklable, path)
    assert load_checkpoint(path).epoch == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_loading_a_file_that_is_not_a_detstack_checkpoint_names_the_format(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"model": {}}, path)
    with pytest.raises(CheckpointError, match="not a detstack checkpoint"):
        load_checkpoint(path)
    (tmp_path / "garbage.pt").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "garbage.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_tiny_checkpoint_fixture_detects_its_rectangles_with_dataset_ids(tiny_checkpoint):
    checkpoint = load_checkpoint(tiny_checkpoint)
    assert checkpoint.category_map.dataset_ids == TINY_DATASET_IDS
    model = build_model(checkpoint.model_config, checkpoint.category_map.num_classes)
    model.load_state_dict(checkpoint.model_state)
    model.eval()
    image, _, ids = tiny_shape_image(np.random.default_rng(123), max_shapes=1)
    blank = torch.full((3, 64, 64), 128 / 255)
    with torch.no_grad():
        found, nothing = model([torch.from_numpy(image).permute(2, 0, 1).float() / 255, blank])
    assert found["scores"].numel() > 0 and float(found["scores"].max()) > 0.5
    top_label = int(found["labels"][found["scores"].argmax()])
    assert checkpoint.category_map.to_dataset_id(top_label) == int(ids[0])
    assert nothing["scores"].numel() == 0 or float(nothing["scores"].max()) < 0.3
