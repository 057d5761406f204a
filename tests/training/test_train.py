"""The fit loop: outputs, exact resume, non-finite loss, schedules and the CLI's config."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import pytest
import torch

from detstack.errors import ConfigError, TrainingError
from training.checkpoint import load_checkpoint
from training.models import ModelConfig
from training.train import QUICKSTART, TrainConfig, lr_factor, train

TINY = ModelConfig(architecture="tiny", weights="none", weights_backbone="none")


class _SimulatedCrashError(Exception):
    """Stands for a crash after an epoch's checkpoint was written."""


def _config(dataset, output, **changes) -> TrainConfig:
    values = {
        "dataset": str(dataset),
        "epochs": 2,
        "model": TINY,
        "output": str(output),
        "batch_size": 4,
        "lr": 0.01,
        "warmup_iters": 3,
        "workers": 0,
        "val_fraction": 0.25,
        "device": "cpu",
    }
    values.update(changes)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def uninterrupted(synthetic_dataset, tmp_path_factory):
    """A 2-epoch tiny run, trained once for the module."""
    output = tmp_path_factory.mktemp("uninterrupted")
    return train(_config(synthetic_dataset, output))


def test_run_writes_checkpoints_and_one_metrics_line_per_epoch(uninterrupted):
    lines = (uninterrupted.output / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in records] == [1, 2]
    for record in records:
        assert {"AP", "AP50", "AP75", "APs", "AR100"} <= set(record["val"])
        assert {"loss", "loss_classifier", "loss_objectness", "lr"} <= set(record["train"])
    checkpoint = load_checkpoint(uninterrupted.last_checkpoint)
    assert checkpoint.epoch == 2
    assert checkpoint.category_map.dataset_ids == (0, 3, 7)
    assert checkpoint.model_config == TINY.for_rebuild()
    assert checkpoint.train_config["epochs"] == 2
    assert checkpoint.dataset_fingerprint
    assert checkpoint.metrics == records[-1]["val"]
    for state in ("optimizer_state", "scheduler_state"):
        assert getattr(checkpoint, state)
    assert uninterrupted.best_checkpoint.is_file()
    best = max(r["val"]["AP50"] for r in records)
    assert load_checkpoint(uninterrupted.best_checkpoint).extra["best_value"] == best


def test_resume_continues_exactly_as_an_uninterrupted_run(
    synthetic_dataset, tmp_path, uninterrupted
):
    config = _config(synthetic_dataset, tmp_path)

    def stop_after_first_epoch(record):
        raise _SimulatedCrashError

    with pytest.raises(_SimulatedCrashError):
        train(config, on_epoch_end=stop_after_first_epoch)
    assert load_checkpoint(tmp_path / "last.pt").epoch == 1
    resumed = train(replace(config, resume=str(tmp_path / "last.pt")))

    expected = load_checkpoint(uninterrupted.last_checkpoint)
    actual = load_checkpoint(resumed.last_checkpoint)
    assert actual.epoch == 2
    for name, tensor in expected.model_state.items():
        assert torch.equal(actual.model_state[name], tensor), name
    assert actual.scheduler_state["last_epoch"] == expected.scheduler_state["last_epoch"]
    assert actual.optimizer_state["param_groups"][0]["lr"] == pytest.approx(
        expected.optimizer_state["param_groups"][0]["lr"]
    )
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    assert resumed.history[-1]["val"] == uninterrupted.history[-1]["val"]


def test_non_finite_loss_stops_naming_the_parts_and_keeps_the_last_checkpoint(
    synthetic_dataset, tmp_path, monkeypatch
):
    config = _config(synthetic_dataset, tmp_path, epochs=1)
    train(config)
    before = (tmp_path / "last.pt").read_bytes()

    import torchvision.models.detection.roi_heads as roi_heads

    real_loss = roi_heads.fastrcnn_loss

    def nan_classifier_loss(*args):
        classifier, box = real_loss(*args)
        return classifier * float("nan"), box

    monkeypatch.setattr(roi_heads, "fastrcnn_loss", nan_classifier_loss)
    with pytest.raises(TrainingError) as raised:
        train(replace(config, epochs=2, resume=str(tmp_path / "last.pt")))
    message = str(raised.value)
    assert "non-finite loss at epoch 2, step 1" in message
    assert "loss_classifier=nan" in message and "loss_box_reg=" in message
    assert (tmp_path / "last.pt").read_bytes() == before
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


def test_an_existing_run_is_not_overwritten_without_resume(uninterrupted, synthetic_dataset):
    with pytest.raises(ConfigError, match="already holds a run"):
        train(_config(synthetic_dataset, uninterrupted.output))


def test_resume_on_another_dataset_is_refused(uninterrupted, synthetic_dataset_factory, tmp_path):
    other = synthetic_dataset_factory("other", images=12, seed=5, size=64)
    config = _config(other, tmp_path, resume=str(uninterrupted.last_checkpoint))
    with pytest.raises(TrainingError, match="trained on another dataset"):
        train(config)


def test_amp_without_cuda_is_a_config_error(synthetic_dataset, tmp_path):
    with pytest.raises(ConfigError, match="--amp needs a CUDA device"):
        train(_config(synthetic_dataset, tmp_path, amp=True))


def test_warmup_rises_linearly_then_cosine_decays_to_zero():
    config = TrainConfig(dataset="d", epochs=2, warmup_iters=10, warmup_factor=0.1)
    factor = lr_factor(config, iters_per_epoch=50)
    assert factor(0) == pytest.approx(0.1)
    assert factor(5) == pytest.approx(
        (0.1 + 0.9 * 0.5) * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * 5 / 100))).item()
    )
    assert factor(50) == pytest.approx(0.5)
    assert factor(100) == pytest.approx(0.0)


def test_step_schedule_decays_at_the_given_epochs_or_at_two_thirds_and_eight_ninths():
    config = TrainConfig(dataset="d", epochs=9, lr_schedule="step", warmup_iters=0)
    assert config.milestones() == (6, 8)
    factor = lr_factor(config, iters_per_epoch=10)
    assert [factor(i) for i in (0, 59, 60, 79, 80)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    explicit = replace(config, lr_steps=(3,), lr_gamma=0.5)
    assert lr_factor(explicit, 10)(30) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"epochs": 0}, "epochs must be at least 1"),
        ({"lr": -1.0}, "lr must be a positive number"),
        ({"lr_schedule": "linear"}, "unknown lr_schedule 'linear'"),
        ({"lr_steps": (5, 2)}, "lr_steps must be increasing"),
        ({"best_metric": "mAP"}, "unknown best_metric 'mAP'"),
        ({"val_fraction": 1.0}, r"val_fraction must be in \[0, 1\)"),
    ],
)
def test_invalid_train_config_names_the_bad_value(changes, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**{"dataset": "d", "epochs": 1, **changes})


def test_train_config_round_trips_through_plain_values():
    config = replace(QUICKSTART, dataset="s3://b/p", lr_steps=(4, 6))
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def _parse(*argv: str) -> argparse.Namespace:
    from cli.main import build_parser

    return build_parser().parse_args(["train", *argv])


def test_cli_quickstart_takes_the_preset_and_explicit_options_win():
    from training._train_cli import build_train_config

    config = build_train_config(_parse("data/shapes", "--model", "quickstart", "--lr", "0.05"))
    assert config == replace(
        QUICKSTART, dataset="data/shapes", lr=0.05, output="runs/train", device="auto"
    )


def test_cli_defaults_other_models_to_pretrained_weights_and_resume_to_last():
    from training._train_cli import build_train_config

    args = _parse("d", "--epochs", "3", "--output", "runs/x", "--resume", "--lr-steps", "2")
    config = build_train_config(args)
    assert config.model.weights == "DEFAULT" and config.model.weights_backbone == "DEFAULT"
    assert (config.epochs, config.resume, config.lr_steps) == (3, "runs/x/last.pt", (2,))


def test_cli_train_refuses_a_broken_dataset_printing_its_report_and_exit_code_1(
    write_coco, tmp_path, capsys
):
    from cli.main import main

    root = write_coco(
        tmp_path / "bad",
        images=[{"id": 1, "file_name": "a.png", "width": 32, "height": 32}],
        annotations=[{"id": 1, "image_id": 1, "category_id": 9, "bbox": [1, 1, 10, 10]}],
    )
    status = main(["train", str(root), "--model", "tiny", "--output", str(tmp_path / "run")])
    captured = capsys.readouterr()
    assert status == 1
    assert "detstack train: error:" in captured.err and "category" in captured.err
    assert "status       NOT usable" in captured.out
    assert not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_amp_on_cuda_trains_and_stores_the_scaler_state(synthetic_dataset, tmp_path):
    result = train(_config(synthetic_dataset, tmp_path, epochs=1, amp=True, device="cuda"))
    checkpoint = load_checkpoint(result.last_checkpoint)
    assert checkpoint.scaler_state and "scale" in checkpoint.scaler_state
    assert all(t.device.type == "cpu" for t in checkpoint.model_state.values())
