"""What a benchmark is asked to do and what it found: frozen, named in perf_analyzer's words."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from client import WIRES
from detstack.contract import DEFAULT_MODEL_NAME
from detstack.errors import ConfigError

logger = logging.getLogger(__name__)


#: The ``protocol`` of the eager PyTorch baseline's result.
BASELINE = "pytorch-eager"


def parse_photo_size(text: str, where: str = "--photo-size") -> tuple[int, int]:
    """``"1920x1080"`` → ``(1920, 1080)``.

    Raises:
        ConfigError: not ``WIDTHxHEIGHT`` with decimal sides (``where`` names the option).
    """
    width, _, height = str(text).lower().partition("x")
    if not (width.isdecimal() and height.isdecimal()):
        raise ConfigError(f"{where} must be WIDTHxHEIGHT such as 1920x1080, got {text!r}")
    return int(width), int(height)


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
