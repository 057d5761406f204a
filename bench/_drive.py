"""Drive a request function at a concurrency level and summarise its latencies.

Shared by the served measurements and the eager baseline, so both are timed the same way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench._results import LatencyResult
from detstack.errors import BadInputError
from detstack.progress import Progress, progress

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    decode_s: float
    request_s: float
    encode_s: float
    cpu_s: float = 0.0
    nbytes: int = 0

    @property
    def total_s(self) -> float:
        return self.decode_s + self.request_s + self.encode_s


def percentile(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def summarise(
    protocol: str,
    concurrency: int,
    samples: list[Sample],
    failures: int,
    duration_s: float,
    warmup: int,
    capped: bool,
    server: dict[str, float | None] | None = None,
    wire: str = "",
) -> LatencyResult:
    totals = np.array([s.total_s * 1e3 for s in samples], dtype=np.float64)
    mean = float(totals.mean()) if len(totals) else float("nan")

    def mean_of(getter: Callable[[Sample], float]) -> float:
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
        p50_ms=percentile(totals, 50),
        p90_ms=percentile(totals, 90),
        p95_ms=percentile(totals, 95),
        p99_ms=percentile(totals, 99),
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


def drive(
    work: Callable[[int], Sample],
    concurrency: int,
    count: int,
    max_seconds: float | None,
    progress: Any = None,
) -> tuple[list[Sample], int, float, bool]:
    """Run ``work(i)`` ``count`` times with ``concurrency`` threads; stop early at the cap."""
    samples: list[Sample] = []
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


def progress_bar(enabled: bool, total: int, description: str) -> Progress[Any] | None:
    """A progress display for ``total`` requests (lines, not frames, when stderr is a log)."""
    if not enabled:
        return None
    return progress(total=total, desc=description, unit="req")
