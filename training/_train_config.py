"""What one training run depends on: :class:`TrainConfig`, its checks, and its LR schedule.

Split from :mod:`training.train` (which re-exports every name here) so that the CLI and the
pipeline can build and check a configuration without the fit loop. :data:`QUICKSTART` is the
offline default the CLI and the pipeline start from.

Example:
    >>> from dataclasses import replace
    >>> config = replace(QUICKSTART, dataset="data/shapes", output="runs/shapes")
    >>> lr_factor(config, iters_per_epoch=120)(0)                # warmup starts low
    0.001
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from detstack.errors import ConfigError
from training.engine import COCO_METRICS
from training.models import ModelConfig

__all__ = [
    "LR_SCHEDULES",
    "QUICKSTART",
    "QUICKSTART_SYNTH_IMAGES",
    "TrainConfig",
    "lr_factor",
]

LR_SCHEDULES: tuple[str, ...] = ("cosine", "step")


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run depends on; stored in every checkpoint.

    Attributes:
        dataset: COCO dataset folder, annotations ``.json``, or ``s3://bucket/prefix``.
        epochs: total number of epochs (a resumed run continues up to this number).
        model: the network and its starting weights.
        output: run folder for ``last.pt``, ``best.pt``, ``metrics.jsonl``.
        batch_size: images per step per process.
        lr: peak learning rate (after warmup), for the whole batch of one process.
        momentum / weight_decay: SGD settings.
        warmup_iters: steps of linear warmup from ``warmup_factor * lr`` to ``lr``.
        warmup_factor: the warmup's starting fraction of ``lr``.
        lr_schedule: ``"cosine"`` (to 0 over all steps) or ``"step"`` (× ``lr_gamma`` at each
            epoch of ``lr_steps``).
        lr_steps: epochs at which the step schedule multiplies the LR by ``lr_gamma``; empty:
            at 2/3 and 8/9 of ``epochs``.
        lr_gamma: the step schedule's factor.
        val_fraction: share of the images held out for validation (0: no evaluation).
        eval_every: evaluate every this many epochs (and always after the last one).
        best_metric: the COCO metric that picks ``best.pt`` (``AP``, ``AP50``, ...).
        workers: DataLoader worker processes per training process (0: load in the loop).
        amp: mixed precision (CUDA only).
        seed: seeds the split, the batches, the flips and the initial weights.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        flip_probability: chance of a horizontal flip per training image.
        aspect_ratio_bins: aspect-ratio groups per side of 1:1 for batching (0: no grouping).
        resume: checkpoint to continue from, or ``None`` for a fresh run.
        s3_endpoint_url: endpoint of an S3-compatible store (MinIO, ...).
    """

    dataset: str
    epochs: int
    model: ModelConfig = field(default_factory=ModelConfig)
    output: str = "runs/train"
    batch_size: int = 4
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 100
    warmup_factor: float = 0.001
    lr_schedule: str = "cosine"
    lr_steps: tuple[int, ...] = ()
    lr_gamma: float = 0.1
    val_fraction: float = 0.2
    eval_every: int = 1
    best_metric: str = "AP50"
    workers: int = 2
    amp: bool = False
    seed: int = 0
    device: str = "auto"
    flip_probability: float = 0.5
    aspect_ratio_bins: int = 3
    resume: str | None = None
    s3_endpoint_url: str | None = None

    def __post_init__(self) -> None:
        positive = {"epochs": self.epochs, "batch_size": self.batch_size}
        positive["eval_every"] = self.eval_every
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.warmup_iters < 0 or not 0 < self.warmup_factor <= 1:
            raise ConfigError(
                f"warmup needs warmup_iters >= 0 and warmup_factor in (0, 1], got "
                f"{self.warmup_iters} and {self.warmup_factor}"
            )
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(
                f"unknown lr_schedule {self.lr_schedule!r}; expected one of "
                f"{', '.join(LR_SCHEDULES)}"
            )
        if any(step < 1 for step in self.lr_steps) or list(self.lr_steps) != sorted(self.lr_steps):
            raise ConfigError(
                f"lr_steps must be increasing epoch numbers >= 1, got {list(self.lr_steps)}"
            )
        if not 0 < self.lr_gamma <= 1:
            raise ConfigError(f"lr_gamma must be in (0, 1], got {self.lr_gamma}")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.best_metric not in COCO_METRICS:
            raise ConfigError(
                f"unknown best_metric {self.best_metric!r}; expected one of "
                f"{', '.join(COCO_METRICS)}"
            )
        if self.workers < 0:
            raise ConfigError(f"workers must be >= 0, got {self.workers}")
        if not 0 <= self.flip_probability <= 1:
            raise ConfigError(f"flip_probability must be in [0, 1], got {self.flip_probability}")
        if self.aspect_ratio_bins < 0:
            raise ConfigError(f"aspect_ratio_bins must be >= 0, got {self.aspect_ratio_bins}")

    def milestones(self) -> tuple[int, ...]:
        """Epochs where the step schedule decays the LR (the default ones when none given)."""
        if self.lr_steps:
            return self.lr_steps
        return tuple(
            sorted({max(1, round(self.epochs * 2 / 3)), max(1, round(self.epochs * 8 / 9))})
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain values (JSON and ``torch.load(weights_only=True)`` safe)."""
        data = asdict(self)
        data["model"] = self.model.to_dict()
        data["lr_steps"] = list(self.lr_steps)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`."""
        values = dict(data)
        try:
            values["model"] = ModelConfig.from_dict(dict(values["model"]))
            values["lr_steps"] = tuple(values.get("lr_steps", ()))
            return cls(**values)
        except (KeyError, TypeError) as error:
            raise ConfigError(f"invalid training config {data!r}: {error}") from None


#: The offline default: the ``quickstart`` ResNet-18-FPN at 128 px trained from scratch on the
#: synthetic shapes dataset (:data:`QUICKSTART_SYNTH_IMAGES` images of ``detstack data
#: synth``): COCO AP50 0.979 on its validation split in 4 min 10 s on 2 idle CPU cores (figures
#: and conditions in benchmarks/results/README.md). Use it with
#: ``dataclasses.replace(QUICKSTART, dataset=..., output=...)``.
QUICKSTART = TrainConfig(
    dataset="",
    epochs=8,
    model=ModelConfig(architecture="quickstart", weights="none", weights_backbone="none"),
    batch_size=4,
    lr=0.02,
    warmup_iters=100,
    lr_schedule="cosine",
    val_fraction=0.2,
    workers=0,
)
#: Synthetic images the quickstart trains on (80 % training, 20 % validation).
QUICKSTART_SYNTH_IMAGES = 600


def lr_factor(config: TrainConfig, iters_per_epoch: int) -> Callable[[int], float]:
    """The LR multiplier of step ``i`` (0-based, counted over the whole run).

    Warmup multiplies linearly from ``warmup_factor`` to 1 over ``warmup_iters`` steps; the
    schedule is applied on top, per iteration, so it is the same however the run is split.
    """
    total = max(1, config.epochs * iters_per_epoch)
    warmup = config.warmup_iters
    milestones = [epoch * iters_per_epoch for epoch in config.milestones()]

    def factor(step: int) -> float:
        warm = 1.0
        if step < warmup:
            warm = config.warmup_factor + (1.0 - config.warmup_factor) * step / warmup
        if config.lr_schedule == "cosine":
            decay = 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
        else:
            decay = config.lr_gamma ** sum(step >= m for m in milestones)
        return warm * decay

    return factor
