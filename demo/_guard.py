"""Refuse requests before any route sees them: unknown ``Host`` names and cross-site posts.

``Host`` must name this page (:class:`HostPolicy`), so a DNS-rebinding page (an attacker's name
pointed at this machine) gets no answer; ``POST`` needs an ``Origin`` equal to this page, so a
missing or ``null`` Origin is refused; oversized targets and headers get 414 and 431.

Example:
    >>> HostPolicy(frozenset({"127.0.0.1", "localhost"})).allows("localhost:8080")
    True
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass
from http import HTTPStatus

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from demo._config import DemoConfig
from demo._http import RequestError, drain

__all__ = ["Guard", "HostPolicy"]

logger = logging.getLogger(__name__)

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Longest request target (path and query) and all headers together the page reads.
_MAX_TARGET_BYTES = 8 * 1024
_MAX_HEADER_BYTES = 16 * 1024


@dataclass(frozen=True)
class HostPolicy:
    """Which ``Host`` header values name this page.

    Attributes:
        names: host names and addresses (lowercase, no trailing dot, no port).
        any_address: accept any IP literal too (the page listens on all addresses; an IP
            address in ``Host`` cannot come from DNS rebinding).
    """

    names: frozenset[str]
    any_address: bool = False

    @classmethod
    def for_config(cls, config: DemoConfig) -> HostPolicy:
        """The bound address, ``localhost`` on loopback, and ``config.allowed_hosts``."""
        names = {_normal_name(name) for name in config.allowed_hosts}
        host = _normal_name(config.host)
        names.add(host)
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        any_address = address is not None and address.is_unspecified
        if any_address:
            names.update(
                _normal_name(name) for name in (socket.gethostname(), socket.getfqdn()) if name
            )
        if host == "localhost":
            names.update({"127.0.0.1", "::1"})
        if host == "localhost" or any_address or (address is not None and address.is_loopback):
            names.add("localhost")
        return cls(frozenset(names), any_address)

    def allows(self, header: str) -> bool:
        """Whether a ``Host`` header value (``name``, ``name:port``, ``[v6]:port``) is ours."""
        name = _host_of(header)
        if name is None:
            return False
        if name in self.names:
            return True
        if not self.any_address:
            return False
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True


def _normal_name(name: str) -> str:
    name = name.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name.endswith("."):
        name = name[:-1]
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name


def _host_of(header: str) -> str | None:
    """The host part of a ``Host`` header, normalised; ``None`` when malformed."""
    value = header.strip()
    if value.startswith("["):
        closing = value.find("]")
        if closing < 0:
            return None
        name, rest = value[1:closing], value[closing + 1 :]
    else:
        name, _, port = value.partition(":")
        rest = f":{port}" if port or value.endswith(":") else ""
    if rest and not (rest.startswith(":") and rest[1:].isascii() and rest[1:].isdigit()):
        return None
    if not name:
        return None
    return _normal_name(name)


class Guard:
    """Refuse a request before any route sees it: wrong ``Host`` (400), cross-site POST (403),
    a target over 8 KiB (414) or headers over 16 KiB (431).

    The body of a refused request is never read as a request: uvicorn (h11) keeps framing the
    connection by ``Content-Length``/chunks and drops the rest of the body.
    """

    def __init__(self, app: ASGIApp, hosts: HostPolicy, drain_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.hosts = hosts
        self.drain_bytes = drain_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            logger.info("refused %s %s: %s", scope["method"], scope["path"], refusal.kind)
            drained = scope["method"] in _SAFE_METHODS or await drain(
                headers, receive, self.drain_bytes, self.timeout_s
            )
            await refusal.response(close=not drained)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope, headers: Headers) -> RequestError | None:
        if len(scope["raw_path"]) + len(scope["query_string"]) > _MAX_TARGET_BYTES:
            return RequestError(
                HTTPStatus.REQUEST_URI_TOO_LONG,
                "bad_request",
                "URI too long",
                f"the request target is longer than {_MAX_TARGET_BYTES} bytes",
            )
        if sum(len(name) + len(value) for name, value in scope["headers"]) > _MAX_HEADER_BYTES:
            return RequestError(
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                "bad_request",
                "Headers too large",
                f"the request headers are longer than {_MAX_HEADER_BYTES} bytes",
            )
        hosts = headers.getlist("host")
        if len(hosts) != 1 or not self.hosts.allows(hosts[0]):
            return RequestError(
                HTTPStatus.BAD_REQUEST,
                "bad_host",
                "Unknown host name",
                "this page answers only to its own address in the Host header; start the demo "
                "with --allow-host NAME to reach it by another name",
            )
        if scope["method"] in _SAFE_METHODS:
            return None
        origins = headers.getlist("origin")
        if len(origins) != 1 or not _same_origin(origins[0], hosts[0]):
            return RequestError(
                HTTPStatus.FORBIDDEN,
                "cross_origin",
                "Cross-site request refused",
                "this page only accepts uploads from itself (the Origin header must name it)",
            )
        return None


def _same_origin(origin: str, host: str) -> bool:
    """``Origin`` is ``http(s)://`` + this request's ``Host``; ``null`` never is."""
    scheme, separator, rest = origin.strip().lower().partition("://")
    return bool(separator) and scheme in ("http", "https") and rest == host.strip().lower()
