"""Measurements of the GPU probe: training steps, eager inference, CUDA graphs, torch.compile.

Each function takes the probe's frozen :class:`ProbeSettings` and a ``deadline`` (a
``time.monotonic()`` value), and returns a list of plain records, one per configuration, that
carry figures (``status`` ``ok`` or ``partial``) or the reason there are none (``failed`` with
the exception's type and message, or ``skipped``). Nothing here raises for a configuration that
fails: the probe runs once, on a borrowed machine, and every answer counts, failures included.

Timing rules (the same for every figure): warm-up iterations are run and excluded; on CUDA
``torch.cuda.synchronize()`` brackets each timed iteration, so a time is the device's, not the
launch queue's; figures are medians (p50) with p90 alongside, and a throughput is
``batch / p50``. Used by ``benchmarks/gpu_probe.py``; see its docstring for the command.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from training.models import ModelConfig, build_model

#: Precisions of the training-throughput matrix and their autocast dtype (``None``: off).
TRAIN_PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None,
    "amp_fp16": torch.float16,
    "amp_bf16": torch.bfloat16,
}
#: Precisions of the inference matrix; ``half`` converts weights and inputs with ``.half()``.
INFER_PRECISIONS: dict[str, torch.dtype | None] = {**TRAIN_PRECISIONS, "half": None}
_REASON_CHARS = 600  # an exception message is kept to this length (some are pages long)


@dataclass(frozen=True)
class ProbeSettings:
    """Sizes and step counts of one probe run (``--quick`` shrinks them, same code)."""

    device: str
    quick: bool
    architecture: str
    image_height: int
    image_width: int
    num_classes: int
    train_batches: tuple[int, ...]
    train_warmup: int
    train_steps: int
    infer_batches: tuple[int, ...]
    infer_warmup: int
    infer_iters: int
    compiled_batches: tuple[int, ...]
    compile_backend: str
    compile_attempts: tuple[str, ...]
    loop_images: int
    loop_image_size: int
    loop_epochs: int
    loop_batch: int
    loop_workers: int
    #: ``(precision, reason)`` of training precisions not run (the quick run on CPU only).
    train_skips: tuple[tuple[str, str], ...] = ()

    def model_config(self) -> ModelConfig:
        """The detector of every section: no downloaded weights (torchvision's own defaults)."""
        return ModelConfig(architecture=self.architecture, weights="none", weights_backbone="none")


def full_settings(device: str, compile_backend: str | None) -> ProbeSettings:
    """The real probe: ``fasterrcnn_resnet50_fpn`` on 800×1067 images."""
    return ProbeSettings(
        device=device,
        quick=False,
        architecture="fasterrcnn_resnet50_fpn",
        image_height=800,
        image_width=1067,
        num_classes=91,
        train_batches=(2, 8),
        train_warmup=3,
        train_steps=10,
        infer_batches=(1, 2, 4, 8),
        infer_warmup=5,
        infer_iters=30,
        compiled_batches=(1, 8),
        compile_backend=compile_backend or "inductor",
        compile_attempts=("compile_backbone", "compile_full"),
        loop_images=40,
        loop_image_size=320,
        loop_epochs=2,
        loop_batch=4,
        loop_workers=2,
    )


def quick_settings(device: str, compile_backend: str | None) -> ProbeSettings:
    """The CI run: the ``tiny`` model on 64×85 images, a few steps of each kind.

    It checks the code paths, not speed, so it is cut to what a 2-core CI machine does in
    well under a minute: batches 1 and 2, ``torch.compile`` of the backbone only and with the
    ``eager`` backend (dynamo traces, no code generation), and on CPU no FP16 training step
    (CPUs have no fast FP16 convolution backward: ~12 s a step even for the tiny model).
    """
    skips: tuple[tuple[str, str], ...] = ()
    if torch.device(device).type == "cpu":
        skips = (("amp_fp16", "not in --quick on CPU: FP16 convolution backward takes ~12 s a "
                  "step there"),)  # fmt: skip
    return ProbeSettings(
        device=device,
        quick=True,
        architecture="tiny",
        image_height=64,
        image_width=85,
        num_classes=4,
        train_batches=(1, 2),
        train_warmup=1,
        train_steps=2,
        infer_batches=(1, 2),
        infer_warmup=1,
        infer_iters=3,
        compiled_batches=(1,),
        compile_backend=compile_backend or "eager",
        compile_attempts=("compile_backbone",),
        loop_images=12,
        loop_image_size=64,
        loop_epochs=1,
        loop_batch=4,
        loop_workers=0,
        train_skips=skips,
    )


def failure(error: BaseException) -> str:
    """``Type: message`` of an exception, kept short, with the error it was raised during.

    A failed CUDA stream capture often raises twice (the first error, then another from
    ending the capture); the first one is the answer, so it is kept too.
    """
    text = f"{type(error).__name__}: {error}".strip()
    cause = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    if cause is not None and cause is not error:
        text += f" [during {type(cause).__name__}: {cause}]"
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 3] + "..."


def summarize(seconds: list[float], batch: int) -> dict[str, Any]:
    """p50/p90/mean in milliseconds and ``batch / p50`` images per second."""
    values = np.asarray(seconds, dtype=float) * 1000.0
    p50 = float(np.percentile(values, 50))
    return {
        "iterations": len(seconds),
        "ms_p50": round(p50, 3),
        "ms_p90": round(float(np.percentile(values, 90)), 3),
        "ms_mean": round(float(values.mean()), 3),
        "images_per_s": round(batch * 1000.0 / p50, 3),
    }


class ProbeDevice:
    """The probe's device with the two things timing needs: sync and peak memory."""

    def __init__(self, name: str) -> None:
        self.device = torch.device(name)
        self.cuda = self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_mib(self) -> float | None:
        if not self.cuda:
            return None
        return round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)


def time_iterations(
    step: Callable[[], Any], device: ProbeDevice, warmup: int, iterations: int, deadline: float
) -> list[float]:
    """Seconds of each of ``iterations`` calls of ``step`` after ``warmup`` untimed ones.

    Stops early (fewer times) when ``deadline`` passes; the caller marks such a record partial.
    """
    for _ in range(warmup):
        if time.monotonic() > deadline:
            return []
        step()
    device.sync()
    times = []
    for _ in range(iterations):
        if time.monotonic() > deadline:
            break
        device.sync()
        started = time.perf_counter()
        step()
        device.sync()
        times.append(time.perf_counter() - started)
    return times


def add_figures(record: dict[str, Any], times: list[float], batch: int, planned: int) -> None:
    """Put the figures of ``times`` in ``record``: ok, partial (cut by the deadline) or failed."""
    if len(times) < 2:
        record.update(status="failed", reason=f"time limit: {len(times)} timed iterations")
        return
    record.update(summarize(times, batch))
    record["status"] = "ok" if len(times) == planned else "partial"
    if len(times) < planned:
        record["reason"] = f"time limit: {len(times)} of {planned} iterations timed"


def autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    """``torch.autocast`` to ``dtype`` on ``device``, or nothing at all for ``None`` (FP32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def synthetic_images(
    settings: ProbeSettings, batch: int, device: torch.device, seed: int = 0
) -> list[torch.Tensor]:
    """``batch`` random CHW float images in [0, 1] of the probe's size, on ``device``."""
    generator = torch.Generator().manual_seed(seed)
    shape = (3, settings.image_height, settings.image_width)
    return [torch.rand(shape, generator=generator).to(device) for _ in range(batch)]


def synthetic_targets(
    settings: ProbeSettings, batch: int, device: torch.device, boxes: int = 4, seed: int = 0
) -> list[dict[str, torch.Tensor]]:
    """``boxes`` random boxes (at least 16 px a side) with random labels per image."""
    generator = torch.Generator().manual_seed(seed)
    height, width = settings.image_height, settings.image_width
    targets = []
    for _ in range(batch):
        x1 = torch.rand(boxes, generator=generator) * (width * 0.7)
        y1 = torch.rand(boxes, generator=generator) * (height * 0.7)
        side_w = 16 + torch.rand(boxes, generator=generator) * (width * 0.3 - 16)
        side_h = 16 + torch.rand(boxes, generator=generator) * (height * 0.3 - 16)
        stacked = torch.stack([x1, y1, x1 + side_w, y1 + side_h], dim=1)
        labels = torch.randint(1, settings.num_classes, (boxes,), generator=generator)
        targets.append({"boxes": stacked.to(device), "labels": labels.to(device)})
    return targets


def fresh_model(settings: ProbeSettings, device: torch.device) -> Any:
    """The probe's detector with the same initial weights every time (seeded), on ``device``."""
    torch.manual_seed(0)
    return build_model(settings.model_config(), settings.num_classes).to(device)


def _skip_all(
    keys: Iterable[dict[str, Any]], reason: str, status: str = "skipped"
) -> list[dict[str, Any]]:
    return [{**key, "status": status, "reason": reason} for key in keys]


def measure_training(settings: ProbeSettings, deadline: float) -> list[dict[str, Any]]:
    """Images per second of SGD steps (forward, loss, backward, step) per batch and precision.

    Every configuration starts from the same initial weights with a fresh optimizer. FP16 uses
    a ``GradScaler``; steps it skipped (overflow) are counted, because a skipped optimizer step
    is cheaper and would flatter the figure.
    """
    device = ProbeDevice(settings.device)
    keys = [
        {"batch": batch, "precision": precision}
        for batch in settings.train_batches
        for precision in TRAIN_PRECISIONS
    ]
    try:
        model = fresh_model(settings, device.device)
    except Exception as error:
        return _skip_all(keys, failure(error), "failed")
    initial = copy.deepcopy(model.state_dict())
    skips = dict(settings.train_skips)
    records = []
    for key in keys:
        if key["precision"] in skips:
            records.append({**key, "status": "skipped", "reason": skips[key["precision"]]})
            continue
        if time.monotonic() > deadline:
            records.append({**key, "status": "skipped", "reason": "time limit"})
            continue
        try:
            records.append(_train_config(model, initial, settings, device, deadline, **key))
        except Exception as error:
            records.append({**key, "status": "failed", "reason": failure(error)})
    del model
    device.reset_peak()
    return records


def _train_config(
    model: Any,
    initial: dict[str, Any],
    settings: ProbeSettings,
    device: ProbeDevice,
    deadline: float,
    *,
    batch: int,
    precision: str,
) -> dict[str, Any]:
    dtype = TRAIN_PRECISIONS[precision]
    model.load_state_dict(initial)
    model.train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=1e-3, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(device.device.type, enabled=dtype is torch.float16)
    images = synthetic_images(settings, batch, device.device)
    targets = synthetic_targets(settings, batch, device.device)
    counts = {"skipped_optimizer_steps": 0, "nonfinite_losses": 0}

    def step() -> None:
        with autocast(device.device, dtype):
            losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        scale = scaler.get_scale() if scaler.is_enabled() else None
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if scale is not None and scaler.get_scale() < scale:
            counts["skipped_optimizer_steps"] += 1
        if not torch.isfinite(loss.detach()).item():
            counts["nonfinite_losses"] += 1

    device.reset_peak()
    times = time_iterations(step, device, settings.train_warmup, settings.train_steps, deadline)
    record: dict[str, Any] = {"batch": batch, "precision": precision}
    add_figures(record, times, batch, settings.train_steps)
    record.update(counts, peak_memory_mib=device.peak_mib(), warmup=settings.train_warmup)
    return record


def measure_inference(settings: ProbeSettings, deadline: float) -> list[dict[str, Any]]:
    """Latency (p50/p90 ms per batch) and throughput of eager inference per batch and precision.

    A call is the detector's whole forward on a list of images already on the device: resize
    and normalisation, backbone, RPN with NMS, RoI heads, post-processing (no host copies).
    """
    device = ProbeDevice(settings.device)
    keys = [
        {"batch": batch, "precision": precision}
        for precision in INFER_PRECISIONS
        for batch in settings.infer_batches
    ]
    try:
        model = fresh_model(settings, device.device).eval()
    except Exception as error:
        return _skip_all(keys, failure(error), "failed")
    half_model = None
    records = []
    for key in keys:
        if time.monotonic() > deadline:
            records.append({**key, "status": "skipped", "reason": "time limit"})
            continue
        try:
            if key["precision"] == "half" and half_model is None:
                half_model = copy.deepcopy(model).half()
            used = half_model if key["precision"] == "half" else model
            records.append(_infer_config(used, settings, device, deadline, **key))
        except Exception as error:
            records.append({**key, "status": "failed", "reason": failure(error)})
    del model, half_model
    device.reset_peak()
    return records


def _infer_config(
    model: Any,
    settings: ProbeSettings,
    device: ProbeDevice,
    deadline: float,
    *,
    batch: int,
    precision: str,
) -> dict[str, Any]:
    dtype = INFER_PRECISIONS[precision]
    images = synthetic_images(settings, batch, device.device)
    if precision == "half":
        images = [image.half() for image in images]
    detections: list[int] = []

    def step() -> None:
        with torch.inference_mode(), autocast(device.device, dtype):
            outputs = model(images)
        detections.append(sum(len(output["boxes"]) for output in outputs))

    device.reset_peak()
    times = time_iterations(step, device, settings.infer_warmup, settings.infer_iters, deadline)
    record: dict[str, Any] = {"batch": batch, "precision": precision}
    add_figures(record, times, batch, settings.infer_iters)
    record["peak_memory_mib"] = device.peak_mib()
    if detections:
        record["detections_per_image"] = round(float(np.mean(detections)) / batch, 1)
    return record
