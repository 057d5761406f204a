"""The ResNet-50 INT8 accuracy benchmark's own logic (benchmarks/resnet50_int8_accuracy.py).

The benchmark itself trains a ResNet-50 for a quarter of an hour, far too long for a test; these
check the parts that decide what it measures: how many epochs it plans, and that its cheaper
RoI sampling changes training only, not the network that is exported.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def bench(monkeypatch):
    """The benchmark module, importable for one test; training's builder restored after it."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    fit = importlib.import_module("training.train")
    monkeypatch.setattr(fit, "build_model", fit.build_model)
    import resnet50_int8_accuracy

    return resnet50_int8_accuracy


def test_planned_epochs_fill_the_budget_next_to_one_evaluation(bench):
    # One evaluation of 30 images at 2/3 s = 20 s; epochs of 50 steps of 2 s: 8 fit in 900 s.
    assert bench._plan_epochs(900, 2.0, 50, 30, cap=30) == 8


def test_planned_epochs_are_at_least_one_and_at_most_the_cap(bench):
    assert bench._plan_epochs(10, 20.0, 50, 30, cap=30) == 1
    assert bench._plan_epochs(10_000, 0.01, 50, 30, cap=12) == 12


def test_unevaluated_epochs_have_no_ap_rather_than_nan(bench):
    assert bench._points(None) is None
    assert bench._points(0.12345) == 12.35


def test_fewer_roi_samples_change_the_training_sampler_only(bench):
    from training.models import ModelConfig, build_model

    fit = importlib.import_module("training.train")
    config = ModelConfig(architecture="tiny", weights="none", weights_backbone="none")
    standard = build_model(config, num_classes=3)
    bench._sample_fewer_rois(32)
    patched = fit.build_model(config, num_classes=3)

    assert patched.roi_heads.fg_bg_sampler.batch_size_per_image == 32
    assert standard.state_dict().keys() == patched.state_dict().keys()
    assert standard.roi_heads.detections_per_img == patched.roi_heads.detections_per_img
