"""The API token's side that servers and clients share: where it comes from, how it travels.

Every command that talks to or starts a secured Triton (serve, predict, bench, score, pipeline,
demo) finds the token the same way: ``--token``, else ``--token-file``, else ``$TOKEN_ENV``.
Passing it through the environment or a file keeps it out of the process's command line, which
other local users can read.

Both ends must also agree on the header that carries it: Triton (configured by ``serve``)
compares one header's value exactly, so the client has to send that header, spelt that way. We
use the standard ``Authorization: Bearer <token>`` on HTTP. On gRPC, Triton only looks at
metadata keys named ``triton-grpc-protocol-<key>`` (gRPC keys are lowercase), so the gRPC header
is ``triton-grpc-protocol-authorization: Bearer <token>``. A token goes into a header, so both
ends refuse a value that would break one (a line break would inject a header). How long a token
must be to start a server is the server's policy (:class:`serve.ApiToken`), not this module's.

Example:
    >>> read_token(None, None, {"DETSTACK_API_TOKEN": "abc"})
    ('abc', '$DETSTACK_API_TOKEN')
    >>> token_headers("s3cret", "grpc")
    {'triton-grpc-protocol-authorization': 'Bearer s3cret'}
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from detstack.errors import ConfigError

__all__ = [
    "GRPC_HEADER_PREFIX",
    "GRPC_TOKEN_HEADER",
    "HTTP_TOKEN_HEADER",
    "TOKEN_ENV",
    "TOKEN_SCHEME",
    "check_header_token",
    "read_token",
    "token_header_name",
    "token_headers",
]

#: Environment variable read when no ``--token`` / ``--token-file`` is given.
TOKEN_ENV = "DETSTACK_API_TOKEN"  # noqa: S105 - a variable name
#: The header carrying the token on HTTP (header names are case-insensitive; gRPC's lowercase).
HTTP_TOKEN_HEADER = "authorization"  # noqa: S105 - a header name
#: Triton only matches gRPC metadata keys that start with this prefix (and strips it).
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"
#: The header carrying the token on gRPC.
GRPC_TOKEN_HEADER = GRPC_HEADER_PREFIX + HTTP_TOKEN_HEADER
#: The header value is ``"Bearer <token>"`` on both protocols (compared exactly by Triton).
TOKEN_SCHEME = "Bearer"  # noqa: S105 - a scheme name
_PROTOCOLS = ("http", "grpc")


def _header_problem(value: str) -> tuple[str, int] | None:
    """``(what is wrong, 1-based position)`` of the first character a header cannot carry."""
    for position, char in enumerate(value, start=1):
        code = ord(char)
        if 0x21 <= code <= 0x7E:
            continue
        if char in "\r\n":
            return "a line break (CR or LF)", position
        if code < 0x20 or code == 0x7F:
            return "a control character", position
        if char == " ":
            return "a space", position
        return "a non-ASCII character", position
    return None


def check_header_token(value: object, source: str = "the configuration", hint: str = "") -> str:
    """``value`` if it can travel in an HTTP/gRPC header: a non-empty visible-ASCII string.

    The one check both ends apply before a token reaches a header (a CR/LF in it would inject
    another header). The message names the rule and the position, never the token.

    Args:
        value: the token.
        source: where it came from (``--token``, a file, ``$TOKEN_ENV``), named in the message.
        hint: a sentence appended to the message (the server says how to generate a token).

    Raises:
        ConfigError: not a string, empty, or with a character outside 0x21-0x7E.
    """
    tail = f"; {hint}" if hint else ""
    if not isinstance(value, str):
        raise ConfigError(
            f"the API token from {source} must be a string, got {type(value).__name__}{tail}"
        )
    if not value:
        raise ConfigError(f"the API token from {source} is empty{tail}")
    problem = _header_problem(value)
    if problem is not None:
        kind, position = problem
        raise ConfigError(
            f"the API token from {source} has {kind} at position {position}: a token goes into an "
            "HTTP/gRPC header and may only use visible ASCII characters (0x21-0x7E, no spaces)"
            + tail
        )
    return value


def token_header_name(protocol: str, header: str = HTTP_TOKEN_HEADER) -> str:
    """The header key that carries the token on ``protocol`` (gRPC: lowercase, Triton's prefix).

    Raises:
        ConfigError: ``protocol`` is neither ``"http"`` nor ``"grpc"``.
    """
    if protocol not in _PROTOCOLS:
        raise ConfigError(f"protocol must be 'http' or 'grpc', got {protocol!r}")
    if protocol == "http":
        return header
    name = header.lower()
    return name if name.startswith(GRPC_HEADER_PREFIX) else GRPC_HEADER_PREFIX + name


def token_headers(
    token: str | None,
    protocol: str,
    *,
    header: str = HTTP_TOKEN_HEADER,
    scheme: str = TOKEN_SCHEME,
) -> dict[str, str]:
    """The request headers that carry ``token`` on ``protocol`` (empty when there is none).

    Args:
        token: the token, or ``None`` (or ``""``) for a server without one.
        protocol: ``"http"`` or ``"grpc"``.
        header: the header the server checks (default ``authorization``).
        scheme: the value's prefix (default ``Bearer``; ``""`` sends the bare token).

    Raises:
        ConfigError: an unknown protocol, or a token a header cannot carry.
    """
    name = token_header_name(protocol, header)
    if not token:
        return {}
    check_header_token(token)
    return {name: f"{scheme} {token}" if scheme else token}


def read_token(
    value: str | None = None,
    file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[str, str] | None:
    """Find the token and say where it came from, without judging it.

    A token file holds the token on its first line; one trailing newline (``\\n`` or
    ``\\r\\n``) is dropped, so ``echo $TOKEN > file`` works.

    Returns:
        ``(token, source)`` with ``source`` naming the flag, file or variable, or ``None`` when
        no token is configured anywhere.

    Raises:
        ConfigError: both ``value`` and ``file`` are given, or the file cannot be read (the
            message never contains the token).
    """
    if value is not None and file is not None:
        raise ConfigError("give the API token with --token or --token-file, not both")
    if value is not None:
        return value, "--token"
    if file is not None:
        try:
            text = Path(file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(
                f"cannot read the API token file {file}: {error.__class__.__name__}"
            ) from None
        token = text[:-1] if text.endswith("\n") else text
        token = token[:-1] if token.endswith("\r") else token
        return token, f"--token-file {file}"
    from_env = (os.environ if environ is None else environ).get(TOKEN_ENV)
    if from_env:
        return from_env, f"${TOKEN_ENV}"
    return None
