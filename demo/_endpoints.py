"""Parse the endpoint a user types into the demo page and check it against the allow-list.

The page's server makes requests on behalf of whoever can reach the page, so without a check it
would be an open proxy into the network it runs in. Every endpoint is parsed strictly and must
match an allow-list entry (loopback only by default). A host name that is not itself on the list
is resolved once and allowed only when *every* address it resolves to is; the request then goes
to that resolved address, so a second DNS answer cannot redirect it (DNS rebinding).

Accepted endpoints::

    grpc://127.0.0.1:8001                                   gRPC, model from the page's field
    http://localhost:8000                                   HTTP
    http://localhost:8000/v2/models/my-detection-model      HTTP, model named in the URL
    http://localhost:8000/v2/models/m/versions/2/infer      ... and a version
    127.0.0.1:8000                                          no scheme: HTTP

Example:
    >>> endpoint = parse_endpoint("grpc://127.0.0.1:8001")
    >>> rules = parse_allow_list(["127.0.0.0/8"])
    >>> check_endpoint(endpoint, rules).address
    '127.0.0.1:8001'
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from detstack.errors import ConfigError, DetstackError, ServerUnreachableError

__all__ = [
    "AllowRule",
    "Endpoint",
    "EndpointNotAllowedError",
    "ResolvedEndpoint",
    "check_endpoint",
    "check_model_name",
    "parse_allow_list",
    "parse_endpoint",
]

_DEFAULT_PORTS = {"http": 8000, "grpc": 8001}
_SCHEMES = {"http": "http", "grpc": "grpc"}
_MODEL_PATH = re.compile(
    r"^/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[0-9]+))?(?:/infer)?/?$"
)
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class EndpointNotAllowedError(DetstackError):
    """The endpoint is well-formed but not on the page's allow-list."""


@dataclass(frozen=True)
class Endpoint:
    """A parsed Triton endpoint: protocol, host, port, and optionally a model and version."""

    protocol: str
    host: str
    port: int
    model: str | None = None
    version: str | None = None


@dataclass(frozen=True)
class ResolvedEndpoint:
    """An allowed endpoint and the ``host:port`` the client must connect to."""

    endpoint: Endpoint
    address: str


@dataclass(frozen=True)
class AllowRule:
    """One allow-list entry: a network or a host name, optionally limited to one port."""

    network: IPNetwork | None = None
    hostname: str | None = None
    port: int | None = None
    any_host: bool = False

    def matches_address(self, address: IPAddress, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        return self.any_host or (self.network is not None and address in self.network)

    def matches_name(self, hostname: str, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        return self.any_host or (self.hostname is not None and self.hostname == hostname)


def _split_host_port(text: str) -> tuple[str, int | None]:
    """``[v6]:p`` / ``host:p`` / ``host`` / bare IPv6 → (host, port or None)."""
    if text.startswith("["):
        closing = text.find("]")
        if closing < 0:
            raise ValueError("unclosed '['")
        host, rest = text[1:closing], text[closing + 1 :]
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise ValueError(f"unexpected {rest!r} after ']'")
        return host, _port(rest[1:])
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, _port(port)
    return text, None  # a hostname, an IPv4 address, or a bare IPv6 address/network


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"port {text!r} is not a number in 1..65535")
    return int(text)


def parse_allow_list(entries: Iterable[str]) -> tuple[AllowRule, ...]:
    """Parse allow-list entries (see :class:`demo.DemoConfig`); a bad entry is a ConfigError."""
    rules = []
    for raw in entries:
        entry = raw.strip()
        if entry == "*":
            rules.append(AllowRule(any_host=True))
            continue
        try:
            host, port = _split_host_port(entry)
            if not host:
                raise ValueError("empty host")
            try:
                rules.append(AllowRule(network=ipaddress.ip_network(host, strict=False), port=port))
            except ValueError:
                if not _HOSTNAME.match(host) or "/" in host:
                    raise ValueError("not a network, an address or a host name") from None
                name = host.lower()
                rules.append(
                    AllowRule(hostname=name[:-1] if name.endswith(".") else name, port=port)
                )
        except ValueError as error:
            raise ConfigError(
                f"allow-list entry {raw!r} is invalid ({error}); expected a network "
                "(10.0.0.0/8), an address, a host name, any of them with :PORT, or '*'"
            ) from None
    return tuple(rules)


def parse_endpoint(text: str) -> Endpoint:
    """Parse what the user typed as the API endpoint.

    Raises:
        ConfigError: the text is not ``[http|grpc]://host[:port][/v2/models/NAME...]``.
    """
    raw = text.strip()
    if not raw:
        raise ConfigError("the API endpoint is empty; expected e.g. grpc://127.0.0.1:8001")
    if "://" not in raw:
        raw = "http://" + raw
    try:
        parts = urlsplit(raw)
        port = parts.port
        host = parts.hostname
    except ValueError as error:
        raise ConfigError(f"API endpoint {text!r} is not a valid URL ({error})") from None
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise ConfigError(
            f"API endpoint {text!r} has scheme {parts.scheme!r}; expected http:// or grpc://"
        )
    if not host:
        raise ConfigError(f"API endpoint {text!r} names no host")
    if parts.username or parts.password:
        raise ConfigError("API endpoint must not hold a user name or password; use the token field")
    if parts.query or parts.fragment:
        raise ConfigError(f"API endpoint {text!r} must not have a query or fragment")
    host = _normalise_host(host, text)
    model = version = None
    path = parts.path
    if path not in ("", "/"):
        match = _MODEL_PATH.match(path)
        if match is None:
            raise ConfigError(
                f"API endpoint path {path!r} is not understood; expected nothing or "
                "/v2/models/NAME[/versions/N][/infer]"
            )
        model = check_model_name(unquote(match["model"]), "in the endpoint")
        version = match["version"]
    return Endpoint(
        protocol=_SCHEMES[scheme],
        host=host,
        port=port if port is not None else _DEFAULT_PORTS[scheme],
        model=model,
        version=version,
    )


def check_model_name(name: str, where: str = "") -> str:
    """Return ``name`` if it is a Triton model name, else raise: it becomes part of a URL path.

    Raises:
        ConfigError: empty, too long, or holding characters other than letters, digits, ``_.-``.
    """
    if not _MODEL_NAME.match(name):
        shown = name if len(name) <= 64 else name[:64] + "..."
        place = f" {where}" if where else ""
        raise ConfigError(
            f"model name {shown!r}{place} is not a valid model name; expected letters, digits, "
            "'_', '.' and '-' (up to 128, starting with a letter or digit)"
        )
    return name


def _normalise_host(host: str, text: str) -> str:
    """An IP literal, or a host name in lowercase without its trailing dot.

    ``localhost.`` and ``localhost`` name the same host, but the dotted form skips
    ``/etc/hosts`` and goes out to DNS: the name is compared and used without the dot.
    """
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    name = host.lower()
    if name.endswith("."):
        name = name[:-1]
    if not _HOSTNAME.match(name) or name.endswith("."):
        raise ConfigError(f"API endpoint {text!r} names host {host!r}, which is not a host name")
    return name


def _format_address(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def check_endpoint(endpoint: Endpoint, rules: tuple[AllowRule, ...]) -> ResolvedEndpoint:
    """Allow the endpoint or raise; return the address the client must connect to.

    Raises:
        EndpointNotAllowedError: the host (or one of its addresses) is not on the allow-list.
        ServerUnreachableError: the host name does not resolve.
    """
    port = endpoint.port
    try:
        literal: IPAddress | None = ipaddress.ip_address(endpoint.host)
    except ValueError:
        literal = None
    if literal is not None:
        if any(rule.matches_address(literal, port) for rule in rules):
            return ResolvedEndpoint(endpoint, _format_address(str(literal), port))
        raise EndpointNotAllowedError(_refusal(endpoint))
    if any(rule.matches_name(endpoint.host, port) for rule in rules):
        return ResolvedEndpoint(endpoint, _format_address(endpoint.host, port))
    try:
        infos = socket.getaddrinfo(endpoint.host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise ServerUnreachableError(f"cannot resolve host {endpoint.host!r} ({error})") from None
    addresses = sorted(
        {ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos},
        key=lambda a: (a.version, int(a)),
    )
    if not addresses or not all(
        any(rule.matches_address(address, port) for rule in rules) for address in addresses
    ):
        raise EndpointNotAllowedError(_refusal(endpoint))
    return ResolvedEndpoint(endpoint, _format_address(str(addresses[0]), port))


def _refusal(endpoint: Endpoint) -> str:
    host = _format_address(endpoint.host, endpoint.port)
    return (
        f"endpoint {host} is not on this demo server's allow-list; start the demo with "
        f"--allow-endpoint {host} to allow it"
    )
