"""Where an embedded server listens: its :class:`Endpoints`, and the ports chosen for it.

A wildcard bind (``0.0.0.0``, ``::``) is reached through loopback, and an IPv6 address needs
brackets in ``host:port``: :func:`connect_address` says it once for every endpoint. Ports given
as 0 are picked free just before the start (:func:`find_free_ports`); a fixed port another
process holds is found before Triton tries it (:func:`port_in_use`), so the message names our
flag rather than Triton's socket error.

Example:
    >>> Endpoints("0.0.0.0", 8000, 8001, 8002).http
    '127.0.0.1:8000'
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

__all__ = ["PORT_FLAGS", "Endpoints", "connect_address", "find_free_ports", "port_in_use"]

#: The command-line flag of each port, named in messages about it.
PORT_FLAGS = {"http": "--http-port", "grpc": "--grpc-port", "metrics": "--metrics-port"}


def connect_address(host: str) -> str:
    """The address a local client uses for a server bound to ``host``."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


@dataclass(frozen=True)
class Endpoints:
    """Where a running server listens, and the addresses to connect to it.

    ``metrics_host`` is where metrics bind (loopback by default, whatever ``host`` is; ``None``
    here means the same as ``host``); ``metrics_port`` is 0 when metrics are off.
    """

    host: str
    http_port: int
    grpc_port: int
    metrics_port: int
    metrics_host: str | None = None

    @property
    def connect_host(self) -> str:
        """The address a local client uses (a wildcard bind is reached through loopback)."""
        return connect_address(self.host)

    @property
    def http(self) -> str:
        """``host:port`` of the HTTP endpoint, as ``tritonclient.http`` takes it."""
        return f"{self.connect_host}:{self.http_port}"

    @property
    def grpc(self) -> str:
        """``host:port`` of the gRPC endpoint, as ``tritonclient.grpc`` takes it."""
        return f"{self.connect_host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.http}"

    @property
    def metrics_url(self) -> str | None:
        """Prometheus metrics (no token: loopback unless asked), ``None`` when they are off."""
        if self.metrics_port == 0:
            return None
        host = self.host if self.metrics_host is None else self.metrics_host
        return f"http://{connect_address(host)}:{self.metrics_port}/metrics"


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def find_free_ports(host: str, count: int) -> list[int]:
    """``count`` distinct ports free on ``host`` right now (bound together, then released)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(_family(host), socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((host if host not in ("", "0.0.0.0") else "0.0.0.0", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def port_in_use(host: str, port: int) -> bool:
    """Whether another process holds ``port`` on ``host`` (a bind there fails)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False
