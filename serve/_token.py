"""The API token: validation, where it comes from, and the headers that carry it.

Triton checks the token itself (``--http-restricted-api`` / ``--grpc-restricted-protocol``): a
request to a restricted API must carry one header whose value matches exactly. We use the
standard ``Authorization: Bearer <token>`` form on HTTP. On gRPC, Triton only looks at headers
named ``triton-grpc-protocol-<key>`` (gRPC metadata keys are lowercase), so the gRPC header is
``triton-grpc-protocol-authorization: Bearer <token>``.

The token is wrapped in :class:`ApiToken`, whose ``repr`` and ``str`` never show the value, so a
config object that holds it can be logged safely. Error messages name the rule a token breaks and
the position of the first offending character, never the token.

Example:
    >>> token = ApiToken("s3cr3t-token-of-32-characters-xx")
    >>> token
    ApiToken(<redacted>)
    >>> sorted(token_headers(token.value, "grpc"))
    ['triton-grpc-protocol-authorization']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from detstack.errors import ConfigError
from detstack.tokens import TOKEN_ENV, read_token

__all__ = [
    "GRPC_HEADER_PREFIX",
    "GRPC_TOKEN_HEADER",
    "HTTP_TOKEN_HEADER",
    "MIN_TOKEN_LENGTH",
    "TOKEN_ENV",
    "TOKEN_SCHEME",
    "ApiToken",
    "load_token",
    "token_headers",
]

#: The header key given to Triton; HTTP clients send it as is.
HTTP_TOKEN_HEADER = "authorization"  # noqa: S105 - a header name
#: Triton only matches gRPC metadata keys that start with this prefix.
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"
GRPC_TOKEN_HEADER = GRPC_HEADER_PREFIX + HTTP_TOKEN_HEADER
#: The header value is ``"Bearer <token>"`` on both protocols (compared exactly by Triton).
TOKEN_SCHEME = "Bearer"  # noqa: S105 - a scheme name
#: Shorter tokens can be guessed; ``secrets.token_urlsafe(32)`` gives 43 characters.
MIN_TOKEN_LENGTH = 16

_GENERATE_HINT = 'generate one with: python -c "import secrets; print(secrets.token_urlsafe(32))"'


def _check_token(value: str, source: str) -> None:
    """Raise ConfigError naming the broken rule; never include the token in the message."""
    if not isinstance(value, str):
        raise ConfigError(
            f"the API token from {source} must be a string, got {type(value).__name__}"
        )
    for position, char in enumerate(value, start=1):
        code = ord(char)
        if 0x21 <= code <= 0x7E:
            continue
        if char in "\r\n":
            kind = "a line break (CR or LF)"
        elif code < 0x20 or code == 0x7F:
            kind = "a control character"
        elif char == " ":
            kind = "a space"
        else:
            kind = "a non-ASCII character"
        raise ConfigError(
            f"the API token from {source} has {kind} at position {position}: a token goes into an "
            "HTTP/gRPC header and may only use visible ASCII characters (0x21-0x7E, no spaces); "
            + _GENERATE_HINT
        )
    if len(value) < MIN_TOKEN_LENGTH:
        raise ConfigError(
            f"the API token from {source} has {len(value)} characters, fewer than the "
            f"{MIN_TOKEN_LENGTH} required so that it cannot be guessed; " + _GENERATE_HINT
        )


@dataclass(frozen=True)
class ApiToken:
    """A validated API token that never prints its value."""

    value: str = field(repr=False)
    source: str = field(default="the configuration", compare=False)

    def __post_init__(self) -> None:
        _check_token(self.value, self.source)

    def __repr__(self) -> str:
        return "ApiToken(<redacted>)"

    __str__ = __repr__

    @property
    def header_value(self) -> str:
        """The exact header value Triton expects: ``"Bearer <token>"``."""
        return f"{TOKEN_SCHEME} {self.value}"


def token_headers(
    token: str | ApiToken | None, protocol: Literal["http", "grpc"]
) -> dict[str, str]:
    """The request headers that carry ``token`` on ``protocol`` (empty when there is no token).

    Args:
        token: the token (a plain string or an :class:`ApiToken`), or ``None``.
        protocol: ``"http"`` or ``"grpc"``; gRPC needs Triton's ``triton-grpc-protocol-`` prefix.

    Returns:
        A dict to pass as ``headers=`` to every tritonclient call.
    """
    if protocol not in ("http", "grpc"):
        raise ConfigError(f"protocol must be 'http' or 'grpc', got {protocol!r}")
    if token is None:
        return {}
    api_token = token if isinstance(token, ApiToken) else ApiToken(token)
    key = HTTP_TOKEN_HEADER if protocol == "http" else GRPC_TOKEN_HEADER
    return {key: api_token.header_value}


def load_token(
    value: str | None = None,
    file: Path | None = None,
    environ: dict[str, str] | None = None,
) -> ApiToken | None:
    """Find the API token: ``--token``, else ``--token-file``, else ``$DETSTACK_API_TOKEN``.

    See :func:`detstack.tokens.read_token` for where it is looked up; the token found is then
    validated as :class:`ApiToken`.

    Returns:
        The validated token, or ``None`` when none is configured anywhere.
    """
    found = read_token(value, file, environ)
    return None if found is None else ApiToken(found[0], source=found[1])
