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

#: Loopback only: a page started on a laptop must not become a proxy into the user's network.
DEFAULT_ALLOWED_ENDPOINTS: tuple[str, ...] = ("127.0.0.0/8", "::1/128", "localhost")


@dataclass(frozen=True)
class DemoConfig:
    """How the demo page is served and which Triton endpoints it may call.

    Attributes:
        host: address the page listens on (loopback by default: the page holds no login).
        port: port of the page; ``0`` picks a free one.
        allowed_endpoints: where the page's server may send requests. Each entry is a network
            (``10.0.0.0/8``), an address (``192.168.1.20``), a host name (``triton.internal``),
            any of those with a port (``triton.internal:8001``, ``[::1]:8000``), or ``*`` for any
            address (an open proxy: only behind your own access control).
        max_upload_mb: largest accepted image file; larger uploads get HTTP 413.
        default_endpoint: the endpoint pre-filled in the page.
        default_model: the model name pre-filled in the page.
        timeout_s: deadline of one request to Triton.
        max_pixels: decompression-bomb limit of the uploaded image.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    allowed_endpoints: tuple[str, ...] = DEFAULT_ALLOWED_ENDPOINTS
    max_upload_mb: float = 10.0
    default_endpoint: str = "grpc://127.0.0.1:8001"
    default_model: str = DEFAULT_MODEL_NAME
    timeout_s: float = 30.0
    max_pixels: int = 40_000_000

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"demo port must be in 0..65535, got {self.port}")
        if not self.max_upload_mb > 0:
            raise ConfigError(f"max_upload_mb must be positive, got {self.max_upload_mb}")
        if not self.timeout_s > 0:
            raise ConfigError(f"timeout_s must be positive, got {self.timeout_s}")
        if not self.allowed_endpoints:
            raise ConfigError("allowed_endpoints is empty: the page could call no endpoint")
        if not self.default_model:
            raise ConfigError("default_model must not be empty")
        # Validate the allow-list entries now, so a typo fails at start, not at first request.
        from demo._endpoints import parse_allow_list

        parse_allow_list(self.allowed_endpoints)

    @property
    def max_upload_bytes(self) -> int:
        """``max_upload_mb`` in bytes."""
        return int(self.max_upload_mb * 1024 * 1024)
