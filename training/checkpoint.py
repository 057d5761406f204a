"""Checkpoints: everything later stages and ``--resume`` need, written atomically.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(weights_only=True)`` (no pickled classes, no code execution on load). It holds the
model, the optimizer, scheduler and AMP scaler states, the number of epochs completed, the
category map, the model and training configurations, the dataset fingerprint and the last
validation metrics. It is written to a temporary file beside the target, fsynced, then renamed
over it, so a crash mid-write never leaves a half-written checkpoint in place of a good one.

Example:
    >>> ckpt = load_checkpoint("runs/exp/checkpoint.pt")          # doctest: +SKIP
    >>> model = build_model(ckpt.model_config, ckpt.category_map.num_classes)  # doctest: +SKIP
    >>> model.load_state_dict(ckpt.model_state)                   # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detstack.atomic import atomic_writer
from detstack.errors import CheckpointError
from training.categories import CategoryMap
from training.models import ModelConfig, build_model

__all__ = [
    "CHECKPOINT_FORMAT",
    "Checkpoint",
    "build_trained_model",
    "load_checkpoint",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "detstack.checkpoint/1"


@dataclass(frozen=True)
class Checkpoint:
    """The content of a checkpoint file.

    Attributes:
        model_config: how to rebuild the network (weights are replaced by ``model_state``).
        category_map: dataset category ids and names in training-label order.
        model_state: the detector's ``state_dict``.
        epoch: number of epochs completed.
        train_config: the training configuration as plain values (epochs, lr, ...).
        dataset_fingerprint: hash of the annotations and image list trained on.
        metrics: the last validation metrics (``{"AP": ..., "AP50": ...}``).
        optimizer_state / scheduler_state / scaler_state: for an exact ``--resume``.
        extra: anything else a stage wants to keep (plain values only).
    """

    model_config: ModelConfig
    category_map: CategoryMap
    model_state: dict[str, Any]
    epoch: int = 0
    train_config: dict[str, Any] = field(default_factory=dict)
    dataset_fingerprint: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    optimizer_state: dict[str, Any] | None = None
    scheduler_state: dict[str, Any] | None = None
    scaler_state: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The on-disk form: plain containers only."""
        return {
            "format": CHECKPOINT_FORMAT,
            "model_config": self.model_config.to_dict(),
            "category_map": self.category_map.to_dict(),
            "model": self.model_state,
            "epoch": self.epoch,
            "train_config": self.train_config,
            "dataset_fingerprint": self.dataset_fingerprint,
            "metrics": self.metrics,
            "optimizer": self.optimizer_state,
            "scheduler": self.scheduler_state,
            "scaler": self.scaler_state,
            "extra": self.extra,
        }


def save_checkpoint(checkpoint: Checkpoint, path: str | Path) -> Path:
    """Write ``checkpoint`` to ``path`` atomically (:func:`detstack.atomic.atomic_writer`).

    The file gets the mode a plain ``open()`` would (``0666 & ~umask``), so the export and
    serve stages can read it like any other output of the run.

    Returns:
        The path written.
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path) as stream:
        torch.save(checkpoint.to_dict(), stream)
    return path


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises:
        CheckpointError: the file is missing, unreadable, or not a detstack checkpoint.
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError) as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {error}") from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(
            f"{path} is not a detstack checkpoint (format {found!r}, expected "
            f"{CHECKPOINT_FORMAT!r})"
        )
    try:
        return Checkpoint(
            model_config=ModelConfig.from_dict(data["model_config"]),
            category_map=CategoryMap.from_dict(data["category_map"]),
            model_state=data["model"],
            epoch=int(data["epoch"]),
            train_config=dict(data.get("train_config") or {}),
            dataset_fingerprint=str(data.get("dataset_fingerprint", "")),
            metrics=dict(data.get("metrics") or {}),
            optimizer_state=data.get("optimizer"),
            scheduler_state=data.get("scheduler"),
            scaler_state=data.get("scaler"),
            extra=dict(data.get("extra") or {}),
        )
    except KeyError as error:
        raise CheckpointError(f"checkpoint {path} lacks the entry {error}") from None


def build_trained_model(checkpoint: Checkpoint) -> Any:
    """Rebuild the trained detector of ``checkpoint``, in eval mode, without any download.

    The network is built from :meth:`ModelConfig.for_rebuild` (same layers, no pretrained
    weights to fetch) and the checkpoint's weights are loaded strictly.

    Raises:
        CheckpointError: the weights do not fit the network the checkpoint describes.
    """
    config = checkpoint.model_config
    model = build_model(config.for_rebuild(), checkpoint.category_map.num_classes)
    try:
        model.load_state_dict(checkpoint.model_state, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise CheckpointError(
            f"the checkpoint's weights do not fit a {config.architecture} with "
            f"{checkpoint.category_map.num_classes} classes: {first}"
        ) from None
    return model.eval()
