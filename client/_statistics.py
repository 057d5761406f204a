"""Triton's inference statistics of several servers, summed into one document of that shape.

A client of several servers (:class:`client.DetectionClient` given a list of URLs) reports the
model's statistics as one server would, so the benchmark's deltas read the same either way.

Example:
    >>> merge_statistics([{"model_stats": [{"name": "m", "version": "1", "inference_count": "2"}]},
    ...                   {"model_stats": [{"name": "m", "version": "1", "inference_count": "3"}]}])
    {'model_stats': [{'name': 'm', 'version': '1', 'inference_count': 5}]}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["merge_statistics"]


#: Keys that identify an entry of Triton's statistics; never summed.
_IDENTITY_KEYS = ("name", "version", "batch_size")


def merge_statistics(documents: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Sum Triton's inference statistics of several servers into one document of that shape.

    Counts and nanoseconds are added (gRPC's JSON gives 64-bit integers as strings: the sum is
    an ``int``), ``last_inference`` is the latest, and entries of a list (models, batch sizes)
    are matched on their ``name``/``version``/``batch_size``.
    """
    if not documents:
        return {}
    merged: Any = documents[0]
    for document in documents[1:]:
        merged = _merge(merged, document, "")
    return merged


def _identity(item: Any) -> tuple:
    if isinstance(item, dict):
        return tuple(str(item.get(key, "")) for key in _IDENTITY_KEYS)
    return (repr(item),)


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdecimal():
        return int(value)
    return None


def _merge(left: Any, right: Any, key: str) -> Any:
    if isinstance(left, dict) and isinstance(right, dict):
        merged = dict(left)
        for name, value in right.items():
            merged[name] = _merge(left[name], value, name) if name in left else value
        return merged
    if isinstance(left, list) and isinstance(right, list):
        by_identity = {_identity(item): item for item in left}
        order = [_identity(item) for item in left]
        for item in right:
            identity = _identity(item)
            if identity in by_identity:
                by_identity[identity] = _merge(by_identity[identity], item, key)
            else:
                by_identity[identity] = item
                order.append(identity)
        return [by_identity[identity] for identity in order]
    if key in _IDENTITY_KEYS:
        return left
    a, b = _as_int(left), _as_int(right)
    if a is None or b is None:
        return left
    return max(a, b) if key == "last_inference" else a + b
