"""The conditions of a run (host, load, library versions), recorded next to its figures."""

from __future__ import annotations

import logging
import os
import platform
import time
from typing import Any

import numpy as np

from bench._results import BenchConfig
from detstack.errors import ImageDecodeError
from detstack.images import probe_image
from detstack.versions import library_versions

logger = logging.getLogger(__name__)


def host_conditions(config: BenchConfig, images: list[tuple[str, bytes]]) -> dict[str, Any]:
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
    conditions.update(library_versions(("tritonclient", "torch", "onnxruntime-gpu", "onnxruntime")))
    return conditions
