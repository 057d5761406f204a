"""The fit loop behind ``detstack train``: dataset → checked splits → epochs → checkpoints.

:func:`train` takes one frozen :class:`TrainConfig` (built once by the CLI, or by the pipeline
from :data:`QUICKSTART`), and:

1. joins the ``torchrun`` process group if there is one (:mod:`training.distributed`);
2. loads and checks the COCO dataset (local or S3) and hands its report to ``on_report``
   before the first step;
3. splits it into training and validation images (deterministic for a seed);
4. trains with SGD (momentum, weight decay), a linear warmup and a step or cosine schedule
   stepped per iteration, aspect-ratio-grouped batches, random horizontal flips, AMP on CUDA;
5. after each epoch (``eval_every``) scores the validation split with pycocotools' COCOeval,
   appends one JSON line to ``OUTPUT/metrics.jsonl`` and writes ``OUTPUT/last.pt`` (every
   epoch) and ``OUTPUT/best.pt`` (best ``best_metric``) atomically.

Every epoch is a pure function of the weights and optimizer state at its start, the seed and
the epoch number (all random generators are re-seeded from ``(seed, rank, epoch)``), so
``resume`` from ``last.pt`` continues exactly as an uninterrupted run would: same batches, same
flips, same learning rates. A non-finite loss stops with :class:`TrainingError` before the
weights change; the last checkpoint on disk is the last good one.

Example:
    >>> from dataclasses import replace
    >>> config = replace(QUICKSTART, dataset="data/shapes", output="runs/shapes")
    >>> result = train(config)                                   # doctest: +SKIP
    >>> result.best_checkpoint, result.best_value                # doctest: +SKIP
    (PosixPath('runs/shapes/best.pt'), 0.95)
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detstack.errors import ConfigError, TrainingError
from training._run_files import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    METRICS_FILE,
    append_metrics,
    link_best,
    read_history,
    write_config,
)
from training._train_config import (
    LR_SCHEDULES,
    QUICKSTART,
    QUICKSTART_SYNTH_IMAGES,
    TrainConfig,
    lr_factor,
)
from training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from training.distributed import DistContext, init_distributed
from training.engine import evaluate, train_one_epoch
from training.figures import write_training_curve
from training.models import build_model

__all__ = [
    "LR_SCHEDULES",
    "QUICKSTART",
    "QUICKSTART_SYNTH_IMAGES",
    "TrainConfig",
    "TrainResult",
    "lr_factor",
    "make_train_loader",
    "train",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """What a finished :func:`train` left behind."""

    output: Path
    last_checkpoint: Path
    best_checkpoint: Path | None
    best_value: float | None
    history: tuple[dict[str, Any], ...]
    rank: int = 0  # under torchrun: this process's rank (only rank 0 has history and files)


def _seed_epoch(seed: int, rank: int, epoch: int) -> int:
    import numpy as np

    return int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1)[0])


def _seed_everything(value: int) -> None:
    import numpy as np
    import torch

    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)  # also seeds every CUDA device


def _improved(value: float, best: float | None) -> bool:
    return best is None or value > best


def train(
    config: TrainConfig,
    *,
    on_report: Callable[[Any], None] | None = None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train ``config.model`` on ``config.dataset``; see the module docstring.

    Args:
        config: the run's configuration.
        on_report: called on the main process with the dataset's ``DatasetReport`` before the
            first step (the CLI prints it).
        on_epoch_end: called on the main process with each epoch's metrics record, after
            its checkpoint is on disk.
        progress: show tqdm progress bars (main process only).

    Returns:
        Paths of the checkpoints and the metrics of every epoch.

    Raises:
        ConfigError: invalid combination (``--amp`` without CUDA, an existing run without
            ``--resume``, ...).
        DatasetError: the dataset failed its checks.
        TrainingError: a non-finite loss, or a checkpoint that does not match the dataset.
    """
    if not config.dataset:
        raise ConfigError("no dataset given; expected a folder, a .json file or s3://...")
    context = init_distributed(config.device)
    try:
        result = _fit(config, context, on_report, on_epoch_end, progress and context.is_main)
    finally:
        context.close()
    if result.rank == 0:
        write_training_curve(result.output)  # OUTPUT/training_curve.png
    return result


def make_train_loader(coco: Any, train_ids: Any, config: TrainConfig, context: DistContext) -> Any:
    """The training ``DataLoader`` of :func:`train` (also used by the throughput benchmark).

    Batches come from a :class:`~training.dataset.GroupedBatchSampler` (aspect-ratio groups)
    over a ``DistributedSampler`` under torchrun, else a sampler seeded by ``(seed, epoch)``.
    Call ``loader.batch_sampler.set_epoch(epoch)`` and re-seed ``loader.generator`` (worker
    seeds) before each epoch.
    """
    import torch
    from torch.utils.data import DataLoader, DistributedSampler

    from training.dataset import (
        DetectionDataset,
        GroupedBatchSampler,
        SeededRandomSampler,
        collate_fn,
    )
    from training.transforms import training_transforms

    train_set = DetectionDataset(coco, train_ids, training_transforms(config.flip_probability))
    if context.distributed:
        sampler: Any = DistributedSampler(
            train_set,
            num_replicas=context.world_size,
            rank=context.rank,
            shuffle=True,
            seed=config.seed,
        )
    else:
        sampler = SeededRandomSampler(len(train_set), seed=config.seed)
    groups = (
        train_set.group_ids(config.aspect_ratio_bins)
        if config.aspect_ratio_bins > 0
        else [0] * len(train_set)
    )
    return DataLoader(
        train_set,
        batch_sampler=GroupedBatchSampler(sampler, groups, config.batch_size),
        num_workers=config.workers,
        collate_fn=collate_fn,
        generator=torch.Generator(),
        pin_memory=context.device.type == "cuda",
    )


def _fit(
    config: TrainConfig,
    context: DistContext,
    on_report: Callable[[Any], None] | None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None,
    progress: bool,
) -> TrainResult:
    import torch
    from torch.utils.data import DataLoader, SequentialSampler

    from training.coco import load_dataset, split_dataset
    from training.dataset import DetectionDataset, collate_fn
    from training.transforms import evaluation_transforms

    device = context.device
    if config.amp and device.type != "cuda":
        raise ConfigError(f"--amp needs a CUDA device; this run uses {device}")
    output = Path(config.output)
    last_path, best_path = output / LAST_CHECKPOINT, output / BEST_CHECKPOINT
    metrics_path = output / METRICS_FILE
    if config.resume is None and last_path.exists():
        raise ConfigError(
            f"{output} already holds a run ({last_path}); pass --resume to continue it or "
            f"choose another --output"
        )

    _seed_everything(config.seed)
    coco = load_dataset(config.dataset, s3_endpoint_url=config.s3_endpoint_url, progress=progress)
    if context.is_main and on_report is not None:
        on_report(coco.report)
    categories = coco.categories
    train_ids, val_ids = split_dataset(coco.image_ids, config.val_fraction, config.seed)
    train_loader = make_train_loader(coco, train_ids, config, context)
    batches = train_loader.batch_sampler
    loader_generator = train_loader.generator
    pin = device.type == "cuda"
    val_loader, coco_gt = None, None
    if context.is_main and val_ids:
        val_set = DetectionDataset(coco, val_ids, evaluation_transforms())
        val_loader = DataLoader(
            val_set,
            batch_size=config.batch_size,
            sampler=SequentialSampler(val_set),
            num_workers=config.workers,
            collate_fn=collate_fn,
            pin_memory=pin,
        )
        coco_gt = coco.to_coco_api(val_ids)
    logger.info(
        "training on %d images, validating on %d, %d categories, %d steps per epoch on %s",
        len(train_ids),
        len(val_ids),
        len(categories.dataset_ids),
        len(batches),
        device,
    )

    # Resuming needs no starting weights (the checkpoint has them): rebuilding the layers only
    # also lets a run that began from downloaded weights resume offline.
    model_config = config.model.for_rebuild() if config.resume is not None else config.model
    model = build_model(model_config, categories.num_classes).to(device)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config, len(batches)))
    scaler = torch.amp.GradScaler("cuda", enabled=config.amp)

    start_epoch, best_value = 0, None
    history: list[dict[str, Any]] = []
    if config.resume is not None:
        checkpoint = load_checkpoint(config.resume)
        _check_resumable(checkpoint, config, coco.fingerprint, categories)
        model.load_state_dict(checkpoint.model_state)
        if checkpoint.optimizer_state is None or checkpoint.scheduler_state is None:
            raise TrainingError(f"{config.resume} has no optimizer/scheduler state to resume")
        optimizer.load_state_dict(checkpoint.optimizer_state)
        scheduler.load_state_dict(checkpoint.scheduler_state)
        if checkpoint.scaler_state:
            scaler.load_state_dict(checkpoint.scaler_state)
        start_epoch = checkpoint.epoch
        best_value = checkpoint.extra.get("best_value")
        if context.is_main:
            history = read_history(metrics_path, start_epoch)
        logger.info("resumed from %s after epoch %d", config.resume, start_epoch)
        if start_epoch >= config.epochs:
            logger.warning(
                "%s already completed %d of %d epochs; nothing to do",
                config.resume,
                start_epoch,
                config.epochs,
            )

    trained = model
    if context.distributed:
        trained = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if context.is_main:
        output.mkdir(parents=True, exist_ok=True)
        write_config(output, config.to_dict())

    for epoch in range(start_epoch, config.epochs):
        started, cpu_started = time.monotonic(), time.process_time()
        epoch_seed = _seed_epoch(config.seed, context.rank, epoch)
        _seed_everything(epoch_seed)
        loader_generator.manual_seed(epoch_seed)
        batches.set_epoch(epoch)
        losses = train_one_epoch(
            trained,
            optimizer,
            scheduler,
            train_loader,
            device,
            scaler=scaler if config.amp else None,
            epoch=epoch,
            progress=progress,
            reduce=context.all_reduce_mean if context.distributed else None,
        )
        train_seconds = time.monotonic() - started
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "train": losses,
            "train_seconds": round(train_seconds, 3),
        }
        last_epoch = epoch + 1 == config.epochs
        if context.is_main:
            metrics: dict[str, float] = {}
            if val_loader is not None and ((epoch + 1) % config.eval_every == 0 or last_epoch):
                metrics = evaluate(
                    model, val_loader, coco_gt, categories, device, progress=progress
                )
                record["val"] = metrics
            record["seconds"] = round(time.monotonic() - started, 3)
            # CPU time of this process: on a shared machine, wall time alone misleads.
            record["cpu_seconds"] = round(time.process_time() - cpu_started, 3)
            append_metrics(metrics_path, record)
            improved = bool(metrics) and _improved(metrics[config.best_metric], best_value)
            if improved:
                best_value = metrics[config.best_metric]
            checkpoint = Checkpoint(
                model_config=config.model.for_rebuild(),
                category_map=categories,
                model_state=model.state_dict(),
                epoch=epoch + 1,
                train_config=config.to_dict(),
                dataset_fingerprint=coco.fingerprint,
                metrics=metrics or (history[-1].get("val", {}) if history else {}),
                optimizer_state=optimizer.state_dict(),
                scheduler_state=scheduler.state_dict(),
                scaler_state=scaler.state_dict() if config.amp else None,
                extra={
                    "best_value": best_value,
                    "best_metric": config.best_metric,
                    "train_losses": losses,
                    "world_size": context.world_size,
                },
            )
            save_checkpoint(checkpoint, last_path)
            if improved or (val_loader is None and last_epoch):
                link_best(last_path, best_path)
            history.append(record)
            logger.info(
                "epoch %d/%d: loss %.4f, %s %.4f, %.0f s",
                epoch + 1,
                config.epochs,
                losses["loss"],
                config.best_metric,
                metrics.get(config.best_metric, float("nan")),
                record["seconds"],
            )
            if on_epoch_end is not None:
                on_epoch_end(record)
        context.barrier()

    return TrainResult(
        output=output,
        last_checkpoint=last_path,
        best_checkpoint=best_path if best_path.exists() else None,
        best_value=best_value,
        history=tuple(history),
        rank=context.rank,
    )


def _check_resumable(
    checkpoint: Checkpoint, config: TrainConfig, fingerprint: str, categories: Any
) -> None:
    if checkpoint.dataset_fingerprint != fingerprint:
        raise TrainingError(
            f"{config.resume} was trained on another dataset (fingerprint "
            f"{checkpoint.dataset_fingerprint[:12]}, this one {fingerprint[:12]}); resume needs "
            f"the same dataset (use --weights PATH to fine-tune from it instead)"
        )
    if checkpoint.category_map != categories:
        raise TrainingError(
            f"{config.resume} has categories {checkpoint.category_map.dataset_ids}, the dataset "
            f"{categories.dataset_ids}"
        )
    if checkpoint.model_config != config.model.for_rebuild():
        raise TrainingError(
            f"{config.resume} holds a {checkpoint.model_config.architecture} model "
            f"({checkpoint.model_config}); this run asks for {config.model}"
        )
    saved = TrainConfig.from_dict(checkpoint.train_config) if checkpoint.train_config else None
    if saved is not None:
        changed = {
            name: (getattr(saved, name), getattr(config, name))
            for name in ("batch_size", "lr", "lr_schedule", "lr_steps", "seed", "epochs")
            if getattr(saved, name) != getattr(config, name)
        }
        if changed:
            logger.warning(
                "resuming with changed settings %s: the run will not match an uninterrupted one",
                {k: f"{a} -> {b}" for k, (a, b) in changed.items()},
            )
