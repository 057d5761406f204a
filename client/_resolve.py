"""One DNS name, every server behind it: the URLs of a Kubernetes headless Service's pods.

Example:
    >>> resolve_endpoints("grpc://localhost:8001")                         # doctest: +SKIP
    ('grpc://127.0.0.1:8001', 'grpc://[::1]:8001')
"""

from __future__ import annotations

import socket

from detstack.errors import ConfigError, ServerUnreachableError

__all__ = ["resolve_endpoints"]


def resolve_endpoints(url: str) -> tuple[str, ...]:
    """Every address a DNS name resolves to, as URLs for :class:`client.DetectionClient`.

    Meant for a Kubernetes headless Service (``<name>-pods.<namespace>.svc:8001``), whose name
    resolves to the address of every ready pod. The list is read once: pods added later (the
    autoscaler) are not seen by a client built from it, so build clients again from time to
    time (one per batch of work, say).

    Args:
        url: ``[scheme://]host:port``; the scheme is kept on every result.

    Returns:
        ``("scheme://10.1.2.3:8001", ...)`` sorted, without repeats (IPv6 in brackets).

    Raises:
        ConfigError: ``url`` is not ``host:port``.
        ServerUnreachableError: the name does not resolve.
    """
    scheme, separator, rest = url.strip().rpartition("://")
    prefix = f"{scheme}{separator}"
    host, _, port = rest.rstrip("/").rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdecimal() or not 0 < int(port) < 65536:
        raise ConfigError(f"url {url!r} is not host:port (a port is needed to resolve it)")
    try:
        answers = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise ServerUnreachableError(f"cannot resolve {host!r}: {error}") from None
    addresses = set()
    for family, _, _, _, address in answers:
        ip = str(address[0])
        addresses.add(f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}")
    return tuple(f"{prefix}{address}" for address in sorted(addresses))
