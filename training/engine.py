"""The two verbs of training: one epoch of SGD steps, and a COCO evaluation.

:func:`train_one_epoch` runs the optimizer over a loader once, stepping the per-iteration LR
schedule (warmup included), with AMP on CUDA, and stops with a :class:`TrainingError` naming
every loss part the moment the total loss is not finite — before the optimizer touches the
weights, so nothing bad reaches a checkpoint. :func:`evaluate` runs the model over a validation
loader, maps the detections back to the dataset's own category ids and scores them with
pycocotools' ``COCOeval`` (AP, AP50, AP75, APs/m/l, AR1/10/100, ARs/m/l, and the AP of each
category from COCOeval's per-class precision).

Both take plain objects (model, loader, device), know nothing about files or the CLI, and
return dictionaries of floats. :mod:`training.train` composes them into the fit loop.

Example:
    >>> losses = train_one_epoch(model, optimizer, scheduler, loader, device)  # doctest: +SKIP
    >>> metrics = evaluate(model, val_loader, coco_gt, category_map, device)   # doctest: +SKIP
    >>> metrics["AP50"]                                                        # doctest: +SKIP
    0.93
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from detstack.errors import TrainingError
from detstack.progress import progress as show_progress
from training.categories import CategoryMap

__all__ = [
    "COCO_METRICS",
    "PER_CATEGORY",
    "coco_metrics",
    "detections_to_coco",
    "evaluate",
    "format_metric",
    "per_category_ap",
    "per_category_metrics",
    "to_coco_results",
    "train_one_epoch",
]

logger = logging.getLogger(__name__)

#: Names of ``COCOeval.stats`` in order, as the COCO API prints them.
COCO_METRICS: tuple[str, ...] = (
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)  # fmt: skip


def _move_targets(targets: Sequence[dict[str, Any]], device: Any) -> list[dict[str, Any]]:
    return [
        {k: v.to(device, non_blocking=True) if hasattr(v, "to") else v for k, v in t.items()}
        for t in targets
    ]


def train_one_epoch(
    model: Any,
    optimizer: Any,
    scheduler: Any,
    loader: Iterable[tuple[Sequence[Any], Sequence[dict[str, Any]]]],
    device: Any,
    *,
    scaler: Any = None,
    epoch: int = 0,
    progress: bool = False,
    total: int | None = None,
    reduce: Callable[[Any], Any] | None = None,
) -> dict[str, float]:
    """Run one pass of SGD steps over ``loader``.

    Args:
        model: a torchvision detector (or a DDP wrapper of one) in any mode; set to train.
        optimizer: stepped once per batch.
        scheduler: an LR scheduler stepped once per batch (warmup and decay are per
            iteration, so resuming at an epoch boundary continues the same LR sequence).
        loader: batches of ``(images, targets)`` as lists.
        device: where the model lives.
        scaler: a ``torch.amp.GradScaler`` for mixed precision on CUDA, or ``None``.
        epoch: 0-based epoch index, for messages and the progress bar.
        progress: show progress, a bar or log lines (the CLI turns it on for rank 0 only).
        total: number of batches, for the bar when ``loader`` has no ``len``.
        reduce: averages a tensor over the DDP processes, so that every process sees the same
            loss values and all of them stop together on a non-finite loss.

    Returns:
        The mean of each loss part and of their sum (``"loss"``) over the epoch, and the last
        learning rate (``"lr"``).

    Raises:
        TrainingError: a non-finite total loss; the message names every part and its value.
    """
    import torch

    model.train()
    sums: dict[str, float] = {}
    steps = 0
    amp = scaler is not None and scaler.is_enabled()
    bar = show_progress(
        loader,
        total=total if total is not None else _length(loader),
        desc=f"epoch {epoch + 1}",
        enabled=progress,
    )
    for images, targets in bar:
        images = [image.to(device, non_blocking=True) for image in images]
        targets = _move_targets(targets, device)
        with torch.autocast(device_type=torch.device(device).type, enabled=amp):
            loss_parts = model(images, targets)
        loss = sum(loss_parts.values())
        # One host sync per step (the same .item() any loop logging its loss pays).
        stacked = torch.stack([value.detach().float() for value in loss_parts.values()])
        if reduce is not None:
            stacked = reduce(stacked)
        values = dict(zip(loss_parts, stacked.tolist(), strict=True))
        total_loss = sum(values.values())
        if not math.isfinite(total_loss):
            parts = ", ".join(f"{name}={value:.6g}" for name, value in values.items())
            raise TrainingError(
                f"non-finite loss at epoch {epoch + 1}, step {steps + 1}: total={total_loss} "
                f"({parts}); the weights were not updated and the last checkpoint is intact. "
                f"Lower --lr, raise --warmup-iters, or check the dataset's boxes"
            )
        optimizer.zero_grad(set_to_none=True)
        if amp:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        steps += 1
        for name, value in values.items():
            sums[name] = sums.get(name, 0.0) + value
        sums["loss"] = sums.get("loss", 0.0) + total_loss
        if progress and steps % 10 == 1:
            bar.set_postfix(loss=f"{total_loss:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    bar.close()
    if steps == 0:
        raise TrainingError(f"epoch {epoch + 1} had no batches; the training split is empty")
    means = {name: value / steps for name, value in sums.items()}
    means["lr"] = float(optimizer.param_groups[0]["lr"])
    return means


def _length(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


def to_coco_results(
    outputs: Sequence[dict[str, Any]], image_ids: Sequence[int], category_map: CategoryMap
) -> list[dict[str, Any]]:
    """Detections of a batch as COCO result entries, with the dataset's own category ids.

    Args:
        outputs: the model's eval outputs (``boxes`` x1y1x2y2, ``scores``, ``labels`` 1..K).
        image_ids: the dataset image id of each output.
        category_map: turns training labels back into dataset category ids.
    """
    results = []
    for output, image_id in zip(outputs, image_ids, strict=True):
        labels = output["labels"].detach().cpu().tolist()
        results.extend(
            detections_to_coco(
                image_id,
                output["boxes"].detach().cpu().tolist(),
                output["scores"].detach().cpu().tolist(),
                [category_map.to_dataset_id(int(label)) for label in labels],
            )
        )
    return results


def evaluate(
    model: Any,
    loader: Iterable[tuple[Sequence[Any], Sequence[dict[str, Any]]]],
    coco_gt: Any,
    category_map: CategoryMap,
    device: Any,
    *,
    progress: bool = False,
) -> dict[str, float]:
    """COCO box metrics of ``model`` on the images of ``loader``.

    Args:
        model: the detector (not a DDP wrapper: evaluation runs on one process).
        loader: batches of ``(images, targets)``; each target carries ``image_id``.
        coco_gt: a pycocotools ``COCO`` of the same images, with dataset category ids.
        category_map: maps predicted labels to dataset category ids.
        device: where the model lives.
        progress: show progress (a bar or log lines).

    Returns:
        ``{name: value}`` for every name of :data:`COCO_METRICS` (``-1`` where COCO has no
        ground truth of that size), plus ``"detections"``, the number of boxes returned, and
        :data:`PER_CATEGORY`, the AP and AP50 of each category
        (:func:`per_category_metrics`).
    """
    import torch

    was_training = model.training
    model.eval()
    results: list[dict[str, Any]] = []
    image_ids: list[int] = []
    try:
        with torch.inference_mode():
            for images, targets in show_progress(loader, desc="evaluate", enabled=progress):
                outputs = model([image.to(device, non_blocking=True) for image in images])
                ids = [int(t["image_id"]) for t in targets]
                image_ids.extend(ids)
                results.extend(to_coco_results(outputs, ids, category_map))
    finally:
        model.train(was_training)
    if not results:
        logger.warning("the model returned no detection on %d validation images", len(image_ids))
    evaluation = _run_cocoeval(coco_gt, results, image_ids)
    metrics: dict[str, Any] = _summary(evaluation, len(results))
    metrics[PER_CATEGORY] = per_category_metrics(evaluation, coco_gt, image_ids)
    return metrics


def coco_metrics(
    coco_gt: Any, results: Sequence[dict[str, Any]], image_ids: Iterable[int]
) -> dict[str, float]:
    """COCOeval box metrics of COCO-format ``results`` on ``image_ids`` of ``coco_gt``.

    The one place detstack scores detections, whoever made them (eager PyTorch in training,
    an ONNX graph in export's gates, the served model through Triton).

    Returns:
        ``{name: value}`` for every name of :data:`COCO_METRICS` (``-1`` where COCO has no
        ground truth of that size; all ``0`` when there is no detection), plus
        ``"detections"``.
    """
    return _summary(_run_cocoeval(coco_gt, results, image_ids), len(results))


def _run_cocoeval(coco_gt: Any, results: Sequence[dict[str, Any]], image_ids: Iterable[int]) -> Any:
    """An accumulated ``COCOeval`` of ``results``, or ``None`` when there is no detection
    (``loadRes`` cannot take an empty list)."""
    from pycocotools.cocoeval import COCOeval

    if not results:
        return None
    # pycocotools prints its progress and summary to stdout; library code must not print.
    with contextlib.redirect_stdout(io.StringIO()) as captured:
        coco_dt = coco_gt.loadRes(list(results))
        evaluation = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluation.params.imgIds = sorted({int(i) for i in image_ids})
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    logger.debug("COCOeval:\n%s", captured.getvalue())
    return evaluation


def _summary(evaluation: Any, detections: int) -> dict[str, float]:
    if evaluation is None:
        return {**dict.fromkeys(COCO_METRICS, 0.0), "detections": 0.0}
    metrics = {
        name: float(value) for name, value in zip(COCO_METRICS, evaluation.stats, strict=True)
    }
    metrics["detections"] = float(detections)
    return metrics


#: Key of :func:`evaluate`'s result (and so of ``metrics.jsonl``'s ``val`` and the checkpoint's
#: ``metrics``) holding :func:`per_category_metrics`.
PER_CATEGORY = "per_category"


def per_category_ap(coco_eval: Any, iou_threshold: float | None = None) -> dict[int, float]:
    """AP of each category from an accumulated ``COCOeval``, keyed by dataset category id.

    COCO's ``stats[0]`` averages ``eval["precision"]`` (shape ``[T, R, K, A, M]``: IoU
    thresholds, recall points, categories, areas, max detections) over everything but the
    category; this keeps the category axis: the mean over T and R at area "all" and 100
    detections, ignoring the ``-1`` entries (no ground truth).

    Args:
        coco_eval: a ``COCOeval`` after ``evaluate()`` and ``accumulate()``.
        iou_threshold: one IoU threshold (``0.5`` gives AP50) instead of the mean over all.

    Returns:
        ``{category_id: AP}``, ``-1.0`` for a category without ground truth in the images.

    Raises:
        ValueError: ``iou_threshold`` is not one of ``coco_eval.params.iouThrs``.
    """
    import numpy as np

    params = coco_eval.params
    precision = np.asarray(coco_eval.eval["precision"])
    area = list(params.areaRngLbl).index("all")
    most = list(params.maxDets).index(100) if 100 in params.maxDets else len(params.maxDets) - 1
    if iou_threshold is not None:
        matches = np.flatnonzero(np.isclose(params.iouThrs, iou_threshold))
        if matches.size == 0:
            raise ValueError(
                f"IoU threshold {iou_threshold} is not one of COCOeval's {list(params.iouThrs)}"
            )
        precision = precision[matches]
    values: dict[int, float] = {}
    for k, category_id in enumerate(params.catIds):
        cells = precision[:, :, k, area, most]
        valid = cells[cells > -1]
        values[int(category_id)] = float(valid.mean()) if valid.size else -1.0
    return values


def per_category_metrics(
    coco_eval: Any, coco_gt: Any, image_ids: Iterable[int]
) -> dict[str, dict[str, Any]]:
    """AP and AP50 of every category of ``coco_gt``, with its name, for reports.

    Keys are the dataset category ids as strings, so that the value survives a JSON round trip
    (``metrics.jsonl``) unchanged. Without a ``coco_eval`` (no detection at all), a category
    scores ``0`` where the images hold ground truth of it and ``-1`` where they hold none, as
    COCOeval itself would.

    Returns:
        ``{"<category id>": {"name": str, "AP": float, "AP50": float}}``, ``-1`` meaning no
        ground truth of that category in the images.
    """
    names = {
        int(c["id"]): str(c.get("name", c["id"])) for c in coco_gt.loadCats(coco_gt.getCatIds())
    }
    if coco_eval is None:
        ids = [int(i) for i in image_ids]
        present = {int(a["category_id"]) for a in coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=ids))}
        ap = {c: 0.0 if c in present else -1.0 for c in names}
        ap50 = dict(ap)
    else:
        ap, ap50 = per_category_ap(coco_eval), per_category_ap(coco_eval, 0.5)
    return {
        str(c): {"name": names.get(c, str(c)), "AP": ap[c], "AP50": ap50.get(c, -1.0)} for c in ap
    }


def format_metric(value: Any, digits: int = 3) -> str:
    """A COCO metric for people: ``"n/a"`` for COCO's ``-1`` (no ground truth of that size or
    category) and for a missing or non-finite value, else the number to ``digits`` places."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "n/a"
    if not math.isfinite(value) or value < 0:
        return "n/a"
    return f"{value:.{digits}f}"


def detections_to_coco(
    image_id: int, boxes: Any, scores: Any, dataset_ids: Any
) -> list[dict[str, Any]]:
    """COCO-format results of one image's detections (x1 y1 x2 y2 → x y w h, dataset ids)."""
    return [
        {
            "image_id": int(image_id),
            "category_id": int(label),
            "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
            "score": float(score),
        }
        for (x1, y1, x2, y2), score, label in zip(
            [list(map(float, b)) for b in boxes], scores, dataset_ids, strict=True
        )
    ]
