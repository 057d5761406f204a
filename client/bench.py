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

import base64
import io
import logging
import os
import platform
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from client._client import WIRES, ClientConfig, DetectionClient
from client._transport import Payload
from client.codec import RowError, decode_row, encode_image, encode_predictions, encoded_row
from detstack.contract import DEFAULT_MODEL_NAME
from detstack.errors import BadInputError, ConfigError, ImageDecodeError
from detstack.images import probe_image

__all__ = [
    "BASELINE",
    "BenchConfig",
    "BenchReport",
    "LatencyResult",
    "load_bench_images",
    "run_benchmark",
]

logger = logging.getLogger(__name__)

#: The ``protocol`` of the eager PyTorch baseline's result.
BASELINE = "pytorch-eager"
_IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


@dataclass(frozen=True)
class BenchConfig:
    """What to measure and where.

    Attributes:
        images: image files and/or folders of images (searched recursively).
        dataset: a COCO dataset (folder, ``.json`` or ``s3://``) whose images to use instead.
        max_images: at most this many distinct images (cycled through by the requests).
        grpc_url / http_url: Triton's endpoints.
        protocols: the transports to measure (``"grpc"``, ``"http"``).
        wires: what a request carries (``"encoded"``, ``"pixels"``; see the module doc).
        photo_size: ``(width, height)``: re-encode every image as a JPEG of this size (quality
            90) first, to measure photo-sized files; ``None`` keeps the files as they are.
        model: the served model's name.
        token: the API token (never written to the report).
        concurrency: the concurrency levels of the sweep (requests in flight).
        requests: recorded requests per level (after warm-up).
        warmup: requests sent first and not recorded, per level.
        max_seconds: time cap of one level's recorded requests (fewer are kept if reached).
        checkpoint: the checkpoint for the eager PyTorch baseline (``None``: no baseline).
        baseline_requests: recorded baseline requests (default: ``requests``).
        torch_threads: intra-op threads of the baseline (default: torch's).
        timeout: deadline of each request in seconds.
        progress: show progress bars.
    """

    images: tuple[Path, ...] = ()
    dataset: str | None = None
    max_images: int = 16
    grpc_url: str = "localhost:8001"
    http_url: str = "localhost:8000"
    protocols: tuple[str, ...] = ("grpc", "http")
    wires: tuple[str, ...] = WIRES
    photo_size: tuple[int, int] | None = None
    model: str = DEFAULT_MODEL_NAME
    token: str | None = field(default=None, repr=False)
    concurrency: tuple[int, ...] = (1, 2, 4)
    requests: int = 100
    warmup: int = 10
    max_seconds: float = 60.0
    checkpoint: Path | None = None
    baseline_requests: int | None = None
    torch_threads: int | None = None
    timeout: float = 60.0
    progress: bool = False

    def __post_init__(self) -> None:
        if not self.images and not self.dataset:
            raise ConfigError("give images (files or folders) or a dataset to benchmark on")
        unknown = [p for p in self.protocols if p not in ("grpc", "http")]
        if unknown or not self.protocols:
            raise ConfigError(f"protocols must be among 'grpc', 'http', got {self.protocols}")
        bad_wires = [w for w in self.wires if w not in WIRES]
        if bad_wires or not self.wires:
            raise ConfigError(f"wires must be among {', '.join(WIRES)}, got {self.wires}")
        if self.photo_size is not None and min(self.photo_size) < 16:
            raise ConfigError(f"photo_size must be at least 16x16, got {self.photo_size}")
        if not self.concurrency or min(self.concurrency) < 1:
            raise ConfigError(f"concurrency levels must be >= 1, got {self.concurrency}")
        if self.requests < 1 or self.warmup < 0 or self.max_images < 1:
            raise ConfigError(
                f"requests and max_images must be >= 1 and warmup >= 0, got {self.requests}, "
                f"{self.max_images}, {self.warmup}"
            )
        if not self.max_seconds > 0:
            raise ConfigError(f"max_seconds must be positive, got {self.max_seconds}")


@dataclass(frozen=True)
class LatencyResult:
    """One measured configuration (a transport at a concurrency level, or the baseline).

    Latencies are end to end per request, in milliseconds; ``throughput`` is inferences per
    second over the recorded window. The component means split the mean latency; the server
    ones come from Triton's statistics (``None`` for the baseline).
    """

    protocol: str
    concurrency: int
    count: int
    warmup: int
    failures: int
    duration_s: float
    throughput: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    std_ms: float
    client_decode_ms: float
    request_ms: float
    client_encode_ms: float
    server_request_ms: float | None = None
    server_queue_ms: float | None = None
    server_compute_ms: float | None = None
    server_compute_infer_ms: float | None = None
    network_overhead_ms: float | None = None
    capped: bool = False
    wire: str = ""
    bytes_per_request: float | None = None
    client_cpu_ms: float | None = None
    latencies_ms: tuple[float, ...] = field(default=(), repr=False)

    @property
    def label(self) -> str:
        """``protocol/wire`` (just the protocol for the baseline)."""
        return f"{self.protocol}/{self.wire}" if self.wire else self.protocol

    def summary(self) -> dict[str, Any]:
        """Every field except the raw latencies (one CSV row)."""
        data = asdict(self)
        data.pop("latencies_ms")
        return data


@dataclass(frozen=True)
class BenchReport:
    """The whole run: conditions, every result, the baseline and the ratios."""

    conditions: dict[str, Any]
    results: tuple[LatencyResult, ...]
    baseline: LatencyResult | None
    ratios: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "conditions": self.conditions,
            "results": [asdict(r) for r in self.results],
            "baseline": asdict(self.baseline) if self.baseline else None,
            "ratios": self.ratios,
        }


@dataclass(frozen=True)
class _Sample:
    decode_s: float
    request_s: float
    encode_s: float
    cpu_s: float = 0.0
    nbytes: int = 0

    @property
    def total_s(self) -> float:
        return self.decode_s + self.request_s + self.encode_s


def load_bench_images(config: BenchConfig) -> list[tuple[str, bytes]]:
    """``(name, file bytes)`` of up to ``max_images`` usable images (unusable ones skipped)."""
    found: list[tuple[str, bytes]] = []
    if config.dataset:
        from training.coco import load_dataset

        dataset = load_dataset(config.dataset)
        for image_id in dataset.image_ids[: config.max_images]:
            found.append((dataset.file_name(image_id), dataset.read_image_bytes(image_id)))
    else:
        paths: list[Path] = []
        for entry in config.images:
            entry = Path(entry)
            if entry.is_dir():
                paths.extend(
                    sorted(
                        p
                        for p in entry.rglob("*")
                        if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES
                    )
                )
            elif entry.is_file():
                paths.append(entry)
            else:
                raise ConfigError(f"{entry} is neither an image file nor a folder")
        for path in paths:
            if len(found) >= config.max_images:
                break
            data = path.read_bytes()
            try:
                probe_image(data, source=str(path))
            except ImageDecodeError as error:
                logger.warning("skipping %s", error)
                continue
            found.append((str(path), data))
    if not found:
        raise ConfigError("no usable image to benchmark on (check the paths or the dataset)")
    return found


def _percentile(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def _model_stats(stats: dict[str, Any], model: str) -> dict[str, tuple[int, int]]:
    """``{phase: (count, ns)}`` summed over the model's versions (HTTP ints or gRPC strings)."""
    totals: dict[str, tuple[int, int]] = {}
    for entry in stats.get("model_stats", []):
        if entry.get("name") != model:
            continue
        for phase, value in (entry.get("inference_stats") or {}).items():
            count, ns = totals.get(phase, (0, 0))
            totals[phase] = (count + int(value.get("count", 0)), ns + int(value.get("ns", 0)))
    return totals


def _per_request_ms(before: dict, after: dict, phases: Sequence[str]) -> float | None:
    done = after.get("success", (0, 0))[0] - before.get("success", (0, 0))[0]
    if done <= 0:
        return None
    ns = sum(after.get(p, (0, 0))[1] - before.get(p, (0, 0))[1] for p in phases)
    return ns / done / 1e6


def _summarise(
    protocol: str,
    concurrency: int,
    samples: list[_Sample],
    failures: int,
    duration_s: float,
    warmup: int,
    capped: bool,
    server: dict[str, float | None] | None = None,
    wire: str = "",
) -> LatencyResult:
    totals = np.array([s.total_s * 1e3 for s in samples], dtype=np.float64)
    mean = float(totals.mean()) if len(totals) else float("nan")

    def mean_of(getter: Callable[[_Sample], float]) -> float:
        return float(np.mean([getter(s) * 1e3 for s in samples])) if samples else float("nan")

    request_ms = mean_of(lambda s: s.request_s)
    server = server or {}
    server_request = server.get("request")
    return LatencyResult(
        protocol=protocol,
        concurrency=concurrency,
        count=len(samples),
        warmup=warmup,
        failures=failures,
        duration_s=round(duration_s, 4),
        throughput=len(samples) / duration_s if duration_s > 0 else float("nan"),
        p50_ms=_percentile(totals, 50),
        p90_ms=_percentile(totals, 90),
        p95_ms=_percentile(totals, 95),
        p99_ms=_percentile(totals, 99),
        mean_ms=mean,
        min_ms=float(totals.min()) if len(totals) else float("nan"),
        max_ms=float(totals.max()) if len(totals) else float("nan"),
        std_ms=float(totals.std()) if len(totals) else float("nan"),
        client_decode_ms=mean_of(lambda s: s.decode_s),
        request_ms=request_ms,
        client_encode_ms=mean_of(lambda s: s.encode_s),
        server_request_ms=server_request,
        server_queue_ms=server.get("queue"),
        server_compute_ms=server.get("compute"),
        server_compute_infer_ms=server.get("compute_infer"),
        network_overhead_ms=(request_ms - server_request) if server_request is not None else None,
        capped=capped,
        wire=wire,
        bytes_per_request=float(np.mean([x.nbytes for x in samples])) if wire and samples else None,
        client_cpu_ms=mean_of(lambda x: x.cpu_s) if wire else None,
        latencies_ms=tuple(round(float(v), 3) for v in totals),
    )


def _drive(
    work: Callable[[int], _Sample],
    concurrency: int,
    count: int,
    max_seconds: float | None,
    progress: Any = None,
) -> tuple[list[_Sample], int, float, bool]:
    """Run ``work(i)`` ``count`` times with ``concurrency`` threads; stop early at the cap."""
    samples: list[_Sample] = []
    failures = 0
    lock = threading.Lock()
    next_index = 0
    capped = False
    start = time.perf_counter()
    deadline = start + max_seconds if max_seconds else None

    stop = threading.Event()

    def worker() -> None:
        nonlocal next_index, failures, capped
        while True:
            with lock:
                if next_index >= count or stop.is_set():
                    return
                if deadline is not None and time.perf_counter() > deadline:
                    capped = True
                    return
                index = next_index
                next_index += 1
            try:
                sample = work(index)
            except BaseException as error:
                if not isinstance(error, BadInputError):
                    stop.set()  # the server is gone or refuses us: the other workers stop too
                    raise
                # A rejected image is counted, not timed.
                with lock:
                    failures += 1
                logger.warning("request %d failed: %s", index, error)
                continue
            with lock:
                samples.append(sample)
            if progress is not None:
                progress.update(1)

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = [pool.submit(worker) for _ in range(concurrency)]
        for future in futures:
            future.result()
    return samples, failures, time.perf_counter() - start, capped


def _progress(enabled: bool, total: int, description: str) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="req", leave=False)


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

        def work(index: int) -> _Sample:
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
            return _Sample(t1 - t0, t2 - t1, t3 - t2, cpu, payload.nbytes)

        for level in config.concurrency:
            warmup = max(config.warmup, level)
            _drive(work, level, warmup, None)
            before = _model_stats(client.statistics(), config.model)
            bar = _progress(config.progress, config.requests, f"{protocol}/{wire} c={level}")
            try:
                samples, failures, duration, capped = _drive(
                    work, level, config.requests, config.max_seconds, bar
                )
            finally:
                if bar is not None:
                    bar.close()
            after = _model_stats(client.statistics(), config.model)
            server = {
                "request": _per_request_ms(before, after, ["success"]),
                "queue": _per_request_ms(before, after, ["queue"]),
                "compute": _per_request_ms(
                    before, after, ["compute_input", "compute_infer", "compute_output"]
                ),
                "compute_infer": _per_request_ms(before, after, ["compute_infer"]),
            }
            result = _summarise(
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


class EagerBaseline:
    """The seed's ``ModelWrapper.predict`` for one image, in eager PyTorch (our own code).

    Base64 text → PIL image → ``ToTensor`` → the detector → each output's numpy bytes as
    base64. Images are converted to RGB first (the seed crashed on grey or RGBA files).
    """

    def __init__(self, checkpoint: Path, threads: int | None = None) -> None:
        import torch

        from training.checkpoint import build_trained_model, load_checkpoint

        if threads:
            torch.set_num_threads(threads)
        self.model = build_trained_model(load_checkpoint(checkpoint))
        self.threads = torch.get_num_threads()

    def __call__(self, cell: str) -> tuple[dict[str, str], float, float, float]:
        """Predict one base64 image; returns the base64 outputs and decode/model/encode times."""
        import torch
        from PIL import Image
        from torchvision.transforms import functional

        t0 = time.perf_counter()
        data = base64.b64decode(cell.encode("utf-8"))
        tensor = functional.to_tensor(Image.open(io.BytesIO(data)).convert("RGB"))
        t1 = time.perf_counter()
        with torch.no_grad():
            prediction = self.model([tensor])[0]
        t2 = time.perf_counter()
        encoded = {
            key: base64.b64encode(value.detach().cpu().numpy().tobytes()).decode("utf-8")
            for key, value in prediction.items()
        }
        t3 = time.perf_counter()
        return encoded, t1 - t0, t2 - t1, t3 - t2


def _measure_baseline(config: BenchConfig, cells: list[str], checkpoint: Path) -> LatencyResult:
    baseline = EagerBaseline(checkpoint, config.torch_threads)
    count = config.baseline_requests or config.requests

    def work(index: int) -> _Sample:
        _, decode_s, model_s, encode_s = baseline(cells[index % len(cells)])
        return _Sample(decode_s, model_s, encode_s)

    _drive(work, 1, config.warmup, None)
    bar = _progress(config.progress, count, BASELINE)
    try:
        samples, failures, duration, capped = _drive(work, 1, count, config.max_seconds, bar)
    finally:
        if bar is not None:
            bar.close()
    logger.info(
        "%s: p50 %.1f ms (%d torch threads)",
        BASELINE,
        _percentile(np.array([x.total_s * 1e3 for x in samples]), 50),
        baseline.threads,
    )
    return _summarise(BASELINE, 1, samples, failures, duration, config.warmup, capped)


def _conditions(config: BenchConfig, images: list[tuple[str, bytes]]) -> dict[str, Any]:
    sizes = []
    for name, data in images:
        try:
            sizes.append(probe_image(data, source=name))
        except ImageDecodeError:
            continue
    conditions: dict[str, Any] = {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "model": config.model,
        "images": len(images),
        "image_sizes": sorted({f"{w}x{h}" for w, h in sizes}),
        "mean_file_bytes": int(np.mean([len(d) for _, d in images])),
        "requests_per_level": config.requests,
        "warmup_per_level": config.warmup,
        "max_seconds_per_level": config.max_seconds,
        "concurrency": list(config.concurrency),
        "protocols": list(config.protocols),
        "token": bool(config.token),
        "checkpoint": str(config.checkpoint) if config.checkpoint else None,
    }
    from importlib import metadata

    for package in ("tritonclient", "torch", "onnxruntime-gpu", "onnxruntime"):
        try:
            conditions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return conditions


def pillow_decode_cpu_ms(images: Sequence[tuple[str, bytes]], rounds: int = 3) -> float:
    """Mean CPU milliseconds of a bare Pillow decode (``Image.open`` + RGB pixels) per image.

    The reference the client's own cost is held against: the least a client that decodes
    would pay. The median of ``rounds`` is taken per image.
    """
    from PIL import Image

    costs = []
    for _, data in images:
        rounds_ms = []
        for _ in range(rounds):
            start = time.thread_time()
            np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            rounds_ms.append((time.thread_time() - start) * 1e3)
        costs.append(float(np.median(rounds_ms)))
    return float(np.mean(costs)) if costs else float("nan")


def photo_jpeg(data: bytes, size: tuple[int, int]) -> bytes:
    """``data`` decoded and re-encoded as a ``size`` JPEG (quality 90): a photo-sized file."""
    from PIL import Image

    from detstack.images import decode_image

    image = Image.fromarray(decode_image(data)).resize(size, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


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
    conditions = _conditions(config, images)
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
        baseline = _measure_baseline(config, cells, config.checkpoint)
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
