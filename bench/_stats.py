"""Server-side times from Triton's statistics API, as per-request deltas over a run."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger(__name__)


def model_stats(stats: dict[str, Any], model: str) -> dict[str, tuple[int, int]]:
    """``{phase: (count, ns)}`` summed over the model's versions (HTTP ints or gRPC strings)."""
    totals: dict[str, tuple[int, int]] = {}
    for entry in stats.get("model_stats", []):
        if entry.get("name") != model:
            continue
        for phase, value in (entry.get("inference_stats") or {}).items():
            count, ns = totals.get(phase, (0, 0))
            totals[phase] = (count + int(value.get("count", 0)), ns + int(value.get("ns", 0)))
    return totals


def per_request_ms(before: dict, after: dict, phases: Sequence[str]) -> float | None:
    done = after.get("success", (0, 0))[0] - before.get("success", (0, 0))[0]
    if done <= 0:
        return None
    ns = sum(after.get(p, (0, 0))[1] - before.get(p, (0, 0))[1] for p in phases)
    return ns / done / 1e6
