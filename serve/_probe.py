"""The few HTTP calls the owner of a starting server makes to it: ready, metrics, models.

:class:`serve.TritonServer` waits until Triton answers ``/v2/health/ready`` (strict readiness:
every model is ready) and its metrics endpoint answers, then reads which models and versions
it serves from the repository index. Only our own loopback ``http://`` endpoint is ever
called, with the server's token; the standard library is enough for that.

Example:
    >>> ready_models([{"name": "m", "version": "2", "state": "READY"},
    ...               {"name": "m", "version": "1", "state": "READY"},
    ...               {"name": "x", "version": "1", "state": "UNAVAILABLE"}])
    {'m': (1, 2)}
"""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from pathlib import Path

from detstack.errors import ServeError
from serve._endpoints import Endpoints

__all__ = ["describe_states", "is_ready", "metrics_up", "ready_models", "repository_index"]


def _request(
    endpoints: Endpoints,
    headers: dict[str, str],
    method: str,
    path: str,
    body: bytes | None = None,
    timeout: float = 2.0,
) -> tuple[int, bytes]:
    request = urllib.request.Request(  # noqa: S310 - always our own http:// endpoint
        endpoints.http_url + path, data=body, method=method, headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - our URL
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def is_ready(endpoints: Endpoints, headers: dict[str, str]) -> bool:
    """Whether the server and every model are ready (raises ``OSError`` while it is not up)."""
    status, _ = _request(endpoints, headers, "GET", "/v2/health/ready", timeout=1.0)
    return status == 200


def metrics_up(endpoints: Endpoints) -> bool:
    """Whether the metrics endpoint answers (``True`` when metrics are off)."""
    url = endpoints.metrics_url
    if url is None:  # metrics are off
        return True
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:  # noqa: S310
            return response.status == 200
    except OSError:
        return False


def repository_index(
    endpoints: Endpoints, headers: dict[str, str], log_path: Path | None
) -> list[dict]:
    """Triton's repository index: one entry (name, version, state, reason) per model version.

    Raises:
        ServeError: the index cannot be read (naming the HTTP status and the log).
    """
    status, body = _request(endpoints, headers, "POST", "/v2/repository/index", body=b"{}")
    if status != 200:
        raise ServeError(f"cannot list the served models (HTTP {status}); log: {log_path}")
    return json.loads(body or b"[]")


def ready_models(entries: list[dict]) -> dict[str, tuple[int, ...]]:
    """``{model name: (versions...)}`` of the READY entries of an index, both sorted."""
    models: dict[str, list[int]] = {}
    for entry in entries:
        if entry.get("state") == "READY":
            models.setdefault(entry["name"], []).append(int(entry.get("version", 0)))
    return {name: tuple(sorted(versions)) for name, versions in sorted(models.items())}


def describe_states(endpoints: Endpoints, headers: dict[str, str]) -> str:
    """Every model's state and reason, for a message; ``""`` when the index cannot be read."""
    with contextlib.suppress(OSError, ServeError, ValueError):
        entries = repository_index(endpoints, headers, None)
        return ", ".join(
            f"{e.get('name')} v{e.get('version', '?')} {e.get('state', '?')}"
            + (f" ({e['reason']})" if e.get("reason") else "")
            for e in entries
        )
    return ""
