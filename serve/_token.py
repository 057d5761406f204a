"""The server's token policy: what an API token must be before ``detstack serve`` starts with it.

Triton checks the token itself (``--http-restricted-api`` / ``--grpc-restricted-protocol``): a
request to a restricted API must carry one header whose value matches exactly. Which header and
value (``Authorization: Bearer <token>``; on gRPC ``triton-grpc-protocol-authorization``) is what
server and client share, so it lives in :mod:`detstack.tokens`; this module adds the server's
rules (long enough not to be guessed) and the :class:`ApiToken` wrapper.

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

from detstack import tokens
from detstack.errors import ConfigError
from detstack.tokens import (
    GRPC_HEADER_PREFIX,
    GRPC_TOKEN_HEADER,
    HTTP_TOKEN_HEADER,
    TOKEN_ENV,
    TOKEN_SCHEME,
    check_header_token,
    read_token,
)

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

#: Shorter tokens can be guessed; ``secrets.token_urlsafe(32)`` gives 43 characters.
MIN_TOKEN_LENGTH = 16

_GENERATE_HINT = 'generate one with: python -c "import secrets; print(secrets.token_urlsafe(32))"'


def _check_token(value: str, source: str) -> None:
    """Raise ConfigError naming the broken rule; never include the token in the message."""
    check_header_token(value, source, _GENERATE_HINT)
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
    if token is None:
        return tokens.token_headers(None, protocol)
    api_token = token if isinstance(token, ApiToken) else ApiToken(token)
    return tokens.token_headers(api_token.value, protocol)


def load_token(
    value: str | None = None,
    file: Path | None = None,
    environ: dict[str, str] | None = None,
) -> ApiToken | None:
    """Find the API token: ``--token``, else ``--token-file``, else ``$TOKEN_ENV``.

    See :func:`detstack.tokens.read_token` for where it is looked up; the token found is then
    validated as :class:`ApiToken`.

    Returns:
        The validated token, or ``None`` when none is configured anywhere.
    """
    found = read_token(value, file, environ)
    return None if found is None else ApiToken(found[0], source=found[1])
