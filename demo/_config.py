"""The demo page's configuration: one frozen dataclass built by the CLI (or a test).

Example:
    >>> config = DemoConfig(port=0, allowed_endpoints=("127.0.0.0/8", "triton.internal:8001"))
    >>> config.max_upload_bytes
    10485760
"""

from __future__ import annotations

from dataclasses import dataclass

from detstack.contract import DEFAULT_MODEL_NAME
from detstack.errors import ConfigError

__all__ = ["DEFAULT_ALLOWED_ENDPOINTS", "DemoConfig"]

#: Triton's own ports on loopback only: a page started on a laptop must become neither a proxy
#: into the user's network nor a way to read (or port-scan) other local services.
DEFAULT_ALLOWED_ENDPOINTS: tuple[str, ...] = (
    "127.0.0.0/8:8000",
    "127.0.0.0/8:8001",
    "[::1]:8000",
    "[::1]:8001",
    "localhost:8000",
    "localhost:8001",
)


@dataclass(frozen=True)
class DemoConfig:
    """How the demo page is served and which Triton endpoints it may call.

    Attributes:
        host: address the page listens on (loopback by default: the page holds no login).
        port: port of the page; ``0`` picks a free one.
        allowed_endpoints: where the page's server may send requests. Each entry is a network
            (``10.0.0.0/8``), an address (``192.168.1.20``), a host name (``triton.internal``),
            any of those with a port (``triton.internal:8001``, ``[::1]:8000``), or ``*`` for any
            address (an open proxy: only behind your own access control). The pre-filled
            ``default_endpoint`` (its host and port) is always allowed as well.
        max_upload_mb: largest accepted image file; larger uploads get HTTP 413.
        default_endpoint: the endpoint pre-filled in the page.
        default_model: the model name pre-filled in the page.
        timeout_s: deadline of one request to Triton.
        max_pixels: decompression-bomb limit of the uploaded image.
        allowed_hosts: further names the page answers to in the ``Host`` header (a DNS name
            of this machine when the page listens on a public address). The bound address and,
            on loopback, ``localhost`` are always accepted; so is any IP address when the page
            listens on all addresses (``0.0.0.0``/``::``). Other names are refused: that is what
            stops a DNS-rebinding page from reading the answers.
        request_timeout_s: time a client has to send a request's headers, and then again its
            body (so at most twice this for one request); a connection that takes longer is
            closed, so stalled clients hold nothing for long.
        keep_alive_s: how long an idle keep-alive connection stays open.
        max_connections: open connections and requests at once; beyond it the page answers 503.
        workers: predictions run at once (threads); further ones wait for a free worker. Four
            times as many uploads are read into memory at once; further ones wait unread.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    allowed_endpoints: tuple[str, ...] = DEFAULT_ALLOWED_ENDPOINTS
    max_upload_mb: float = 10.0
    default_endpoint: str = "grpc://127.0.0.1:8001"
    default_model: str = DEFAULT_MODEL_NAME
    timeout_s: float = 30.0
    max_pixels: int = 40_000_000
    allowed_hosts: tuple[str, ...] = ()
    request_timeout_s: float = 30.0
    keep_alive_s: float = 5.0
    max_connections: int = 64
    workers: int = 4

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"demo port must be in 0..65535, got {self.port}")
        if not self.max_upload_mb > 0:
            raise ConfigError(f"max_upload_mb must be positive, got {self.max_upload_mb}")
        for name in ("timeout_s", "request_timeout_s", "keep_alive_s"):
            value = getattr(self, name)
            if not 0 < value < float("inf"):
                raise ConfigError(f"{name} must be a positive number of seconds, got {value}")
        if self.max_connections < 1:
            raise ConfigError(f"max_connections must be at least 1, got {self.max_connections}")
        if self.workers < 1:
            raise ConfigError(f"workers must be at least 1, got {self.workers}")
        if not self.allowed_endpoints:
            raise ConfigError("allowed_endpoints is empty: the page could call no endpoint")
        if not self.default_model:
            raise ConfigError("default_model must not be empty")
        # Validate the allow-list entries now, so a typo fails at start, not at first request.
        from demo._endpoints import check_model_name, parse_allow_list

        parse_allow_list(self.endpoint_allow_list)
        check_model_name(self.default_model, "(--model)")
        for name in self.allowed_hosts:
            if not name or any(c in name for c in "/ :@[]"):
                raise ConfigError(f"allowed host {name!r} is not a host name")

    @property
    def endpoint_allow_list(self) -> tuple[str, ...]:
        """``allowed_endpoints`` and the pre-filled endpoint's ``host:port``."""
        from demo._endpoints import parse_endpoint

        endpoint = parse_endpoint(self.default_endpoint)
        host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
        entry = f"{host}:{endpoint.port}"
        if entry in self.allowed_endpoints:
            return self.allowed_endpoints
        return (*self.allowed_endpoints, entry)

    @property
    def max_upload_bytes(self) -> int:
        """``max_upload_mb`` in bytes."""
        return int(self.max_upload_mb * 1024 * 1024)
