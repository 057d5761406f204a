"""How :class:`client.DetectionClient` reaches and calls the server: :class:`ClientConfig`.

One frozen dataclass, checked once when it is built: the URL(s) and their ``host:port``, the
protocol and the wire, the token (refused if a header cannot carry it, by the rule the server
shares: :func:`detstack.tokens.check_header_token`), deadlines, retries and size limits.

Example:
    >>> ClientConfig(url="http://10.0.0.2:9000/", protocol="http").address
    '10.0.0.2:9000'
    >>> ClientConfig(url="localhost").address
    'localhost:8001'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from detstack.contract import DEFAULT_MODEL_NAME
from detstack.errors import ConfigError
from detstack.images import DEFAULT_MAX_PIXELS
from detstack.tokens import HTTP_TOKEN_HEADER, TOKEN_SCHEME, check_header_token

__all__ = [
    "DEFAULT_TOKEN_HEADER",
    "DEFAULT_TOKEN_SCHEME",
    "GRPC_MAX_REQUEST_BYTES",
    "HTTP_MAX_REQUEST_BYTES",
    "WIRES",
    "ClientConfig",
    "is_ssl",
]

#: Header carrying the API token as ``Bearer <token>`` (``triton-grpc-protocol-`` is prepended
#: on gRPC): what ``detstack serve`` makes Triton check (:mod:`detstack.tokens`).
DEFAULT_TOKEN_HEADER = HTTP_TOKEN_HEADER
DEFAULT_TOKEN_SCHEME = TOKEN_SCHEME
#: Triton's default ``--http-max-input-size`` (64 MiB); gRPC allows up to 2 GiB.
HTTP_MAX_REQUEST_BYTES = 64 * 2**20
GRPC_MAX_REQUEST_BYTES = 2**31 - 2**20
_DEFAULT_PORTS = {"http": 8000, "grpc": 8001}
#: What a request carries: the image file (the server decodes) or decoded uint8 CHW pixels.
WIRES = ("encoded", "pixels")


@dataclass(frozen=True)
class ClientConfig:
    """How :class:`DetectionClient` reaches and calls the server.

    Attributes:
        url: ``host:port`` (a ``http://``, ``https://`` or ``grpc://`` prefix is accepted; the
            port defaults to 8001 for gRPC, 8000 for HTTP), or a sequence of them: servers of
            the same model repository, used together (kept as a tuple; see :attr:`urls`).
        model: the served model's name.
        model_version: a version to pin (``""``: the server's latest).
        protocol: ``"grpc"`` (default, fastest) or ``"http"``.
        wire: ``"encoded"`` (default: send the image file, the server decodes it) or
            ``"pixels"`` (decode here, send uint8 CHW pixels).
        token: the API token, or ``None`` for a server without one. Never logged.
        token_header: the header name the server checks (see ``detstack serve``).
        token_scheme: the token's prefix in that header (``""`` for the bare token).
        timeout: seconds allowed for each call (the deadline of every request).
        connect_timeout: seconds allowed to open a connection (HTTP).
        concurrency: requests in flight at once (one image per request).
        retries: extra attempts for a transient failure (refused, reset, 503, UNAVAILABLE).
        backoff: first wait before a retry in seconds; doubled each time, capped at 5 s.
        max_pixels: larger images are refused (decompression-bomb protection; in encoded mode
            the server applies its own limit).
        max_request_bytes: larger requests (the file, or the pixel tensor) are refused
            client-side; ``None``: the server's default limit for the protocol (64 MiB HTTP,
            2 GiB gRPC).
        probe_backoff: with several URLs, seconds an endpoint that was taken out waits before
            its first readiness probe; doubled after each failed probe.
        probe_backoff_max: the longest wait between two probes of one endpoint.
    """

    url: str | tuple[str, ...] = "localhost:8001"
    model: str = DEFAULT_MODEL_NAME
    model_version: str = ""
    protocol: str = "grpc"
    wire: str = "encoded"
    token: str | None = field(default=None, repr=False)
    token_header: str = DEFAULT_TOKEN_HEADER
    token_scheme: str = DEFAULT_TOKEN_SCHEME
    timeout: float = 60.0
    connect_timeout: float = 5.0
    concurrency: int = 4
    retries: int = 4
    backoff: float = 0.25
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_request_bytes: int | None = None
    probe_backoff: float = 0.5
    probe_backoff_max: float = 10.0

    def __post_init__(self) -> None:
        if not isinstance(self.url, str):
            if not isinstance(self.url, Sequence) or not all(isinstance(u, str) for u in self.url):
                raise ConfigError(
                    f"url must be host:port or a sequence of them, got {type(self.url).__name__}"
                )
            object.__setattr__(self, "url", tuple(self.url))  # frozen: normalised once
            if not self.url:
                raise ConfigError("url: expected at least one host:port, got an empty sequence")
        if self.protocol not in _DEFAULT_PORTS:
            raise ConfigError(f"protocol must be 'grpc' or 'http', got {self.protocol!r}")
        if self.wire not in WIRES:
            raise ConfigError(f"wire must be 'encoded' or 'pixels', got {self.wire!r}")
        for name in ("timeout", "connect_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.retries < 0 or self.backoff < 0:
            raise ConfigError(
                f"retries and backoff must be >= 0, got {self.retries} and {self.backoff}"
            )
        if not 0 < self.probe_backoff <= self.probe_backoff_max:
            raise ConfigError(
                "probe_backoff must be > 0 and at most probe_backoff_max, got "
                f"{self.probe_backoff!r} and {self.probe_backoff_max!r}"
            )
        addresses = [_address(url, self.protocol) for url in self.urls]
        repeated = sorted({a for a in addresses if addresses.count(a) > 1})
        if repeated:
            raise ConfigError(f"url names {', '.join(repeated)} more than once")
        if self.token is not None:
            check_header_token(self.token, "ClientConfig.token")

    @property
    def urls(self) -> tuple[str, ...]:
        """The URLs as given (one for a single ``url`` string)."""
        return (self.url,) if isinstance(self.url, str) else self.url

    @property
    def addresses(self) -> tuple[str, ...]:
        """Every endpoint's ``host:port`` (see :attr:`address`), in the order given."""
        return tuple(_address(url, self.protocol) for url in self.urls)

    @property
    def address(self) -> str:
        """``host:port`` without a scheme, with the protocol's default port if none was given.

        With several URLs, the first one's (see :attr:`addresses`).
        """
        return _address(self.urls[0], self.protocol)

    @property
    def ssl(self) -> bool:
        """Whether the (first) URL asks for TLS (``https://`` or ``grpcs://``)."""
        return is_ssl(self.urls[0])

    @property
    def request_limit(self) -> int:
        if self.max_request_bytes is not None:
            return self.max_request_bytes
        return HTTP_MAX_REQUEST_BYTES if self.protocol == "http" else GRPC_MAX_REQUEST_BYTES


def _address(url: str, protocol: str) -> str:
    """``host:port`` of one URL, without its scheme, with the protocol's default port."""
    address = url.strip()
    for scheme in ("http://", "https://", "grpc://", "grpcs://"):
        if address.lower().startswith(scheme):
            address = address[len(scheme) :]
    address = address.rstrip("/")
    if not address or "/" in address or "," in address:
        hint = " (pass several URLs as a list, not one string)" if "," in address else ""
        raise ConfigError(f"url {url!r} is not host:port{hint}")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "]" in port:
        address = f"{address}:{_DEFAULT_PORTS[protocol]}"
    return address


def is_ssl(url: str) -> bool:
    """Whether ``url`` asks for TLS (``https://`` or ``grpcs://``)."""
    return url.strip().lower().startswith(("https://", "grpcs://"))
