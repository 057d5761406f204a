"""Latency and throughput of the served model, and of the seed's eager PyTorch wrapper.

For each transport (gRPC, HTTP), each wire (``encoded``: the image file travels and the server
decodes it; ``pixels``: the client decodes and sends uint8 CHW) and each concurrency level, the
benchmark sends the same real images (a folder, or images of a COCO dataset; optionally
re-encoded as photo-sized JPEGs, ``photo_size``) as base64 cells, the seed's protocol, one image
per request: after ``warmup`` requests that are not counted, it records ``requests`` requests
(or what fits in ``max_seconds``). Each request's latency is split into

* ``client_decode``: the client's work on the cell: base64 and the cheap checks (encoded), or
  base64 and image decoding to the uint8 CHW tensor (pixels);
* ``request``: the Triton call (serialisation, network, server), of which Triton's statistics
  API gives the server side, as deltas over the run: ``server_queue`` and ``server_compute``
  (input + infer + output) per request;
* ``client_encode``: the answer turned into the seed's base64 cells.

Per setting it also records ``bytes_per_request`` (the input tensor on the wire) and
``client_cpu_ms`` (CPU time of the calling thread per request: the client's whole cost).

The **baseline** runs in this process on the same images: the checkpoint in eager PyTorch,
doing what the seed's ``ModelWrapper.predict`` does per image (base64 decode, PIL, ``ToTensor``,
the model, numpy bytes to base64). The report gives the ratio of both.

Results are frozen dataclasses named in perf_analyzer's words; only the CLI prints and plots.

Example:
    >>> config = BenchConfig(images=(Path("photos"),), concurrency=(1, 4), requests=200)
    >>> report = run_benchmark(config)                                   # doctest: +SKIP
    >>> report.results[0].p50_ms, report.results[0].throughput           # doctest: +SKIP
    (41.3, 24.0)
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence

import numpy as np

from bench._conditions import host_conditions
from bench._drive import Sample, drive, progress_bar, summarise
from bench._eager import measure_baseline
from bench._images import load_bench_images, photo_jpeg, pillow_decode_cpu_ms
from bench._results import BenchConfig, BenchReport, LatencyResult
from bench._stats import model_stats, per_request_ms
from client import ClientConfig, DetectionClient, Payload
from client.codec import RowError, decode_row, encode_image, encode_predictions, encoded_row
from detstack.errors import BadInputError

logger = logging.getLogger(__name__)


def _measure_transport(
    config: BenchConfig, protocol: str, wire: str, cells: list[str]
) -> list[LatencyResult]:
    url = config.grpc_url if protocol == "grpc" else config.http_url
    client_config = ClientConfig(
        url=url,
        model=config.model,
        protocol=protocol,
        wire=wire,
        token=config.token,
        timeout=config.timeout,
        concurrency=max(config.concurrency),
        retries=1,
    )
    results = []
    with DetectionClient.from_config(client_config) as client:
        client.wait_until_ready(timeout=config.timeout)

        def work(index: int) -> Sample:
            cpu0, t0 = time.thread_time(), time.perf_counter()
            cell = cells[index % len(cells)]
            prepared = encoded_row(cell, index) if wire == "encoded" else decode_row(cell, index)
            t1 = time.perf_counter()
            if isinstance(prepared, RowError):
                raise BadInputError(prepared.reason)
            where = f"image {index % len(cells)}"
            if wire == "encoded":
                payload = Payload.of_file(prepared)
                answer = client.infer_encoded(prepared, where)
            else:
                payload = Payload.of_pixels(prepared)
                answer = client.infer_chw(prepared, where)
            t2 = time.perf_counter()
            encode_predictions([index], [answer.detections])
            t3 = time.perf_counter()
            cpu = time.thread_time() - cpu0
            return Sample(t1 - t0, t2 - t1, t3 - t2, cpu, payload.nbytes)

        for level in config.concurrency:
            warmup = max(config.warmup, level)
            drive(work, level, warmup, None)
            before = model_stats(client.statistics(), config.model)
            bar = progress_bar(config.progress, config.requests, f"{protocol}/{wire} c={level}")
            try:
                samples, failures, duration, capped = drive(
                    work, level, config.requests, config.max_seconds, bar
                )
            finally:
                if bar is not None:
                    bar.close()
            after = model_stats(client.statistics(), config.model)
            server = {
                "request": per_request_ms(before, after, ["success"]),
                "queue": per_request_ms(before, after, ["queue"]),
                "compute": per_request_ms(
                    before, after, ["compute_input", "compute_infer", "compute_output"]
                ),
                "compute_infer": per_request_ms(before, after, ["compute_infer"]),
            }
            result = summarise(
                protocol, level, samples, failures, duration, warmup, capped, server, wire
            )
            logger.info(
                "%s c=%d: p50 %.1f ms, %.2f infer/s",
                result.label,
                level,
                result.p50_ms,
                result.throughput,
            )
            results.append(result)
    return results


def _ratios(
    config: BenchConfig, results: Sequence[LatencyResult], baseline: LatencyResult | None
) -> dict[str, float]:
    """Side-by-side ratios of one run: baseline / served, and pixels / encoded."""
    ratios: dict[str, float] = {}
    for protocol in config.protocols:
        for wire in config.wires:
            mine = [r for r in results if r.protocol == protocol and r.wire == wire and r.count]
            if not mine:
                continue
            lowest = min(mine, key=lambda r: r.concurrency)
            best = max(mine, key=lambda r: r.throughput)
            if baseline is not None and baseline.count:
                key = f"{protocol}_{wire}"
                ratios[f"{key}_p50_speedup_at_c{lowest.concurrency}"] = (
                    baseline.p50_ms / lowest.p50_ms
                )
                ratios[f"{key}_best_throughput_ratio"] = best.throughput / baseline.throughput
        by_wire = {
            r.wire: r
            for r in results
            if r.protocol == protocol and r.concurrency == min(config.concurrency) and r.count
        }
        if "encoded" in by_wire and "pixels" in by_wire:
            encoded, pixels = by_wire["encoded"], by_wire["pixels"]
            ratios[f"{protocol}_pixels_over_encoded_p50"] = pixels.p50_ms / encoded.p50_ms
            if encoded.bytes_per_request and pixels.bytes_per_request:
                ratios[f"{protocol}_pixels_over_encoded_bytes"] = (
                    pixels.bytes_per_request / encoded.bytes_per_request
                )
            if encoded.client_cpu_ms and pixels.client_cpu_ms:
                ratios[f"{protocol}_pixels_over_encoded_client_cpu"] = (
                    pixels.client_cpu_ms / encoded.client_cpu_ms
                )
    return ratios


def run_benchmark(config: BenchConfig) -> BenchReport:
    """Measure every transport at every concurrency level, then the eager baseline.

    Raises:
        ConfigError: no usable image.
        ServerUnreachableError, UnauthorizedError, ModelNotReadyError: the server cannot be used.
    """
    images = load_bench_images(config)
    if config.photo_size is not None:
        images = [(name, photo_jpeg(data, config.photo_size)) for name, data in images]
    cells = [encode_image(data) for _, data in images]
    conditions = host_conditions(config, images)
    conditions["wires"] = list(config.wires)
    conditions["photo_size"] = list(config.photo_size) if config.photo_size else None
    conditions["mean_file_bytes_sent"] = int(np.mean([len(data) for _, data in images]))
    conditions["pillow_decode_cpu_ms"] = round(pillow_decode_cpu_ms(images), 3)
    results: list[LatencyResult] = []
    for protocol in config.protocols:
        for wire in config.wires:
            results.extend(_measure_transport(config, protocol, wire, cells))
    baseline = None
    if config.checkpoint is not None:
        baseline = measure_baseline(config, cells, config.checkpoint)
        import torch

        conditions["baseline_torch_threads"] = torch.get_num_threads()
    ratios = _ratios(config, results, baseline)
    decode_ms = conditions["pillow_decode_cpu_ms"]
    for result in results:
        if result.wire == "encoded" and result.client_cpu_ms and decode_ms > 0:
            key = f"{result.protocol}_encoded_client_cpu_over_pillow_decode_c{result.concurrency}"
            ratios[key] = result.client_cpu_ms / decode_ms
        if result.wire == "encoded" and result.bytes_per_request:
            key = f"{result.protocol}_encoded_bytes_over_file"
            ratios[key] = result.bytes_per_request / conditions["mean_file_bytes_sent"]
    conditions["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return BenchReport(conditions, tuple(results), baseline, ratios)
