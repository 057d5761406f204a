"""Reads Triton's own log: why it failed, which port it could not bind, how it stopped.

Triton says what went wrong only in its log (stdout and stderr, written to the run dir), in
lines meant for people. Each question we ask of it is one function here, over the text of this
run's part of the log (:func:`read_log`), so that :class:`serve.TritonServer` can turn Triton's
reason into one :class:`~detstack.errors.ServeError` that names it. The patterns follow Triton
2.51's messages; a line they do not match falls through to the last error line, then the tail.

Example:
    >>> failure_reason("E1201 10:00:00.0 1 server.cc:1] error: bad thing", None, [])
    'error: bad thing'
"""

from __future__ import annotations

import re
from pathlib import Path

from serve._endpoints import PORT_FLAGS, Endpoints
from serve._triton_args import redact

__all__ = [
    "PortTakenError",
    "exit_timeout_expired",
    "failed_service",
    "failure_reason",
    "idle_at_exit_timeout",
    "port_taken",
    "read_log",
]

_IN_USE = re.compile(r"already in use|Address already in use|Unable to configure socket")
_SERVICE_FAILURE = re.compile(r"failed to start (\w+) service: (.*?)\"?$", re.M)
_IN_FLIGHT = re.compile(r"Found (\d+) model versions that have in-flight inferences")
_LOAD_FAILURE = re.compile(
    r"failed to load '(?P<model>[^']+)' version (?P<version>\d+): (?P<reason>.*?)\"?$", re.M
)
_POLL_FAILURE = re.compile(
    r"(failed to poll model repository.*|failed to stat.*|Could not get MetaData.*)$", re.M
)
_ERROR_LINE = re.compile(r"^(?:error: |E\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] )(?P<message>.+)$", re.M)


def read_log(path: Path | None, offset: int) -> str:
    """The log from ``offset`` on (this run's part; a run dir's log is appended to), or ``""``."""
    if path is None or not path.exists():
        return ""
    with open(path, "rb") as log:
        log.seek(offset)
        return log.read().decode("utf-8", errors="replace")


class PortTakenError(Exception):
    """One of our ports was taken: retried with new ports when it was picked free, else told."""

    def __init__(self, name: str, port: int, host: str) -> None:
        super().__init__(name, port)
        self.name, self.port, self.host = name, port, host

    def message(self) -> str:
        """What the user reads: the port, its flag, and how to choose another."""
        return (
            f"{self.name.upper() if self.name != 'metrics' else 'metrics'} port {self.port} "
            f"({PORT_FLAGS[self.name]}) is already in use on {self.host}; choose another with "
            f"{PORT_FLAGS[self.name]} PORT (0 = any free port) or stop the process using it"
        )


def port_taken(log: str, endpoints: Endpoints | None, host: str) -> PortTakenError | None:
    """Which of our ports Triton could not bind, from its log."""
    if endpoints is None or not _IN_USE.search(log):
        return None
    for name in ("http", "grpc", "metrics"):
        port = getattr(endpoints, f"{name}_port")
        if port == 0:  # metrics off
            continue
        if name == "metrics" and endpoints.metrics_host is not None:
            host = endpoints.metrics_host
        if re.search(
            rf"[:'\s]{port}\b[^\n]*(already in use|Address already in use)", log
        ) or re.search(rf"(already in use|Address already in use)[^\n]*[:'\s]{port}\b", log):
            return PortTakenError(name, port, host)
    return None


def failed_service(log: str) -> tuple[str, str] | None:
    """``(service, reason)`` of a service Triton could not start and went on without."""
    failed = _SERVICE_FAILURE.search(log)
    return None if failed is None else (failed[1], failed[2])


def exit_timeout_expired(log: str) -> bool:
    """Whether Triton stopped waiting for connections and requests at its exit timeout."""
    return "Exit timeout expired" in log


def idle_at_exit_timeout(log: str) -> bool:
    """Whether no request was running when the exit timeout expired (only idle connections)."""
    in_flight = _IN_FLIGHT.findall(log)
    return bool(in_flight) and in_flight[-1] == "0"


def _clean(text: str, secrets: list[str]) -> str:
    text = text.replace("\\n", "\n").replace('\\"', '"').strip().strip('"')
    text = text.split("\n\nAt:")[0].strip()  # keep the error, not the Python traceback
    return redact(text, secrets)


def failure_reason(log: str, log_path: Path | None, secrets: list[str]) -> str:
    """Triton's reason for failing, from ``log``, with every secret masked.

    Models that failed to load come first (all of them), then a repository that could not be
    read, then the last error line, then the log's last lines.
    """
    where = f" (full log: {log_path})" if log_path else ""
    failures = [
        f"model '{m['model']}' version {m['version']} failed to load: "
        + _clean(m["reason"], secrets)
        for m in _LOAD_FAILURE.finditer(log)
    ]
    if failures:
        return "; ".join(dict.fromkeys(failures)) + where
    polls = [_clean(m.group(1), secrets) for m in _POLL_FAILURE.finditer(log)]
    if polls:
        return polls[-1] + where
    errors = [_clean(m["message"], secrets) for m in _ERROR_LINE.finditer(log)]
    if errors:
        return errors[-1] + where
    tail = "\n".join(line for line in log.strip().splitlines()[-5:])
    return (_clean(tail, secrets) or "no message in its log") + where
