"""The GPU probe's attempts beyond eager inference: CUDA graphs and ``torch.compile``.

A two-stage detector has data-dependent shapes (proposals after NMS, detections per image),
so neither a CUDA graph of the whole forward nor a single compiled graph is expected to work
as is. Each attempt is tried anyway and reported: figures when it works, the exception's type
and message when it does not. The part with static shapes (backbone + FPN on a fixed-size
batch) is tried on its own, since that is where either technique could pay.

The probe runs these in child processes (``gpu_probe.py --worker cuda_graphs|compile``): a
failed stream capture can leave the CUDA context unusable, and a compile can take minutes, so
each child gets a timeout and writes its records after every attempt (``on_record``).
Used by ``benchmarks/gpu_probe.py``; see its docstring for the command.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from _gpu_probe_measure import (
    ProbeDevice,
    ProbeSettings,
    add_figures,
    failure,
    fresh_model,
    synthetic_images,
    time_iterations,
)

Record = dict[str, Any]
#: Called with each attempt's record: first with ``status: running`` (so a child killed during
#: an attempt still says which one), then with the final record, which replaces it.
OnRecord = Callable[[Record], None]


def _backbone_input(model: Any, settings: ProbeSettings, batch: int, device: Any) -> Any:
    """The batched, resized, padded tensor the detector's transform feeds its backbone."""
    with torch.inference_mode():
        images, _ = model.transform(synthetic_images(settings, batch, device))
    return images.tensors.clone()


def run_cuda_graphs(settings: ProbeSettings, deadline: float, on_record: OnRecord) -> None:
    """Backbone+FPN eager vs. graph replay per batch, then a capture of the whole detector.

    The whole-detector capture goes last: when it fails, the context may be left unusable.
    """
    device = ProbeDevice(settings.device)
    attempts = [("cuda_graph_backbone", batch) for batch in settings.compiled_batches]
    attempts.append(("cuda_graph_full", settings.compiled_batches[0]))
    if not device.cuda:
        for attempt, batch in attempts:
            reason = "needs a CUDA device"
            on_record({"attempt": attempt, "batch": batch, "status": "skipped", "reason": reason})
        return
    model = fresh_model(settings, device.device).eval()
    for attempt, batch in attempts:
        record: Record = {"attempt": attempt, "batch": batch, "precision": "fp32"}
        if time.monotonic() > deadline:
            on_record({**record, "status": "skipped", "reason": "time limit"})
            continue
        on_record({**record, "status": "running"})
        try:
            if attempt == "cuda_graph_backbone":
                _graph_backbone(model, settings, device, deadline, batch, record)
            else:
                _graph_full(model, settings, device, deadline, batch, record)
        except Exception as error:
            record.update(status="failed", reason=failure(error))
        on_record(record)


def _capture(function: Callable[[], Any]) -> tuple[Any, Any]:
    """Warm ``function`` up on a side stream (as PyTorch's docs require), then capture it."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            function()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output = function()
    return graph, output


def _graph_backbone(
    model: Any,
    settings: ProbeSettings,
    device: ProbeDevice,
    deadline: float,
    batch: int,
    record: Record,
) -> None:
    static = _backbone_input(model, settings, batch, device.device)
    record["input_shape"] = list(static.shape)

    def forward() -> Any:
        with torch.inference_mode():
            return model.backbone(static)

    eager = time_iterations(forward, device, settings.infer_warmup, settings.infer_iters, deadline)
    graph, _ = _capture(forward)
    replay = time_iterations(
        graph.replay, device, settings.infer_warmup, settings.infer_iters, deadline
    )
    add_figures(record, replay, batch, settings.infer_iters)
    if len(eager) >= 2 and "ms_p50" in record:
        eager_record: Record = {}
        add_figures(eager_record, eager, batch, settings.infer_iters)
        record["eager_ms_p50"] = eager_record["ms_p50"]
        record["speedup_vs_eager"] = round(eager_record["ms_p50"] / record["ms_p50"], 3)
    record["scope"] = "backbone+FPN only (static shapes); RPN and RoI heads not included"


def _graph_full(
    model: Any,
    settings: ProbeSettings,
    device: ProbeDevice,
    deadline: float,
    batch: int,
    record: Record,
) -> None:
    images = synthetic_images(settings, batch, device.device)

    def forward() -> Any:
        with torch.inference_mode():
            return model(images)

    graph, _ = _capture(forward)
    times = time_iterations(
        graph.replay, device, settings.infer_warmup, settings.infer_iters, deadline
    )
    add_figures(record, times, batch, settings.infer_iters)
    record["scope"] = "whole detector; replay repeats the captured shapes (outputs unchecked)"


def run_compile(settings: ProbeSettings, deadline: float, on_record: OnRecord) -> None:
    """``torch.compile`` of the backbone, then of the whole detector, per batch.

    ``compile_s`` is the first call (tracing and code generation) and is not in the latency
    figures. A new batch size is a new input shape, so each batch compiles again.
    """
    device = ProbeDevice(settings.device)
    model = fresh_model(settings, device.device).eval()
    backbone = model.backbone
    # Batch-major: with little time left, each attempt has a figure at the first batch.
    for batch in settings.compiled_batches:
        for attempt in ("compile_backbone", "compile_full"):
            record: Record = {
                "attempt": attempt,
                "batch": batch,
                "precision": "fp32",
                "backend": settings.compile_backend,
            }
            if attempt not in settings.compile_attempts:
                reason = "not in --quick: dynamo takes ~20 s to trace the whole detector on CPU"
                on_record({**record, "status": "skipped", "reason": reason})
                continue
            if time.monotonic() > deadline:
                on_record({**record, "status": "skipped", "reason": "time limit"})
                continue
            on_record({**record, "status": "running"})
            torch._dynamo.reset()
            try:
                if attempt == "compile_backbone":
                    model.backbone = torch.compile(backbone, backend=settings.compile_backend)
                    compiled = model
                else:
                    model.backbone = backbone
                    compiled = torch.compile(model, backend=settings.compile_backend)
                _compiled_latency(compiled, settings, device, deadline, batch, record)
            except Exception as error:
                record.update(status="failed", reason=failure(error))
            on_record(record)
    model.backbone = backbone


def _compiled_latency(
    compiled: Any,
    settings: ProbeSettings,
    device: ProbeDevice,
    deadline: float,
    batch: int,
    record: Record,
) -> None:
    images = synthetic_images(settings, batch, device.device)

    def forward() -> Any:
        with torch.inference_mode():
            return compiled(images)

    device.sync()
    started = time.perf_counter()
    forward()
    device.sync()
    record["compile_s"] = round(time.perf_counter() - started, 2)
    times = time_iterations(forward, device, settings.infer_warmup, settings.infer_iters, deadline)
    add_figures(record, times, batch, settings.infer_iters)
    record["graph_breaks"] = _graph_breaks()


def _graph_breaks() -> int | None:
    """Graph breaks dynamo counted so far (``None`` where this torch does not say)."""
    try:
        from torch._dynamo.utils import counters

        return int(sum(counters["graph_break"].values()))
    except Exception:
        return None
