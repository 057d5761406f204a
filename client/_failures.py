"""What a failure of a Triton call means: one :mod:`detstack.errors` type, and whether to retry.

Every exception ``tritonclient`` (or the socket under it) raises while a transport talks to
Triton leaves :mod:`client._transport` as a :class:`TransportError`: the typed error to raise and
a flag saying whether trying again can help:

=====================================  ==========================  =========
what happened                          error                       retried
=====================================  ==========================  =========
connection refused / reset, HTTP 503,  ServerUnreachableError      yes
gRPC UNAVAILABLE
model has no loaded version (server    ModelNotReadyError          yes
restarting, version being swapped)
no answer before the deadline          ServerUnreachableError      no
HTTP 401/403, gRPC "protocol is        UnauthorizedError           no
restricted"
HTTP 404, gRPC NOT_FOUND (unknown      ModelNotReadyError          no
model name)
HTTP 400, gRPC INVALID_ARGUMENT        BadInputError               no
=====================================  ==========================  =========

Timeouts are not retried: a request that took too long once would load a struggling server
again. Messages never contain the API token.

Example:
    >>> failure = classify(ConnectionRefusedError(111, "refused"), settings, "a request")
    ...                                                               # doctest: +SKIP
    >>> type(failure.error).__name__, failure.transient               # doctest: +SKIP
    ('ServerUnreachableError', True)
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from detstack.errors import (
    BadInputError,
    InferenceError,
    ModelNotReadyError,
    ServerUnreachableError,
    UnauthorizedError,
)
from detstack.tokens import TOKEN_ENV

if TYPE_CHECKING:
    from client._transport import TransportSettings

__all__ = ["TransportError", "call", "classify"]

T = TypeVar("T")


class TransportError(Exception):
    """Internal carrier: the typed error to raise and whether retrying can help."""

    def __init__(self, error: InferenceError, transient: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.transient = transient


def _scrub(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


def classify(error: BaseException, settings: TransportSettings, what: str) -> TransportError:
    """Turn any exception raised while talking to Triton into a :class:`TransportError`."""
    from tritonclient.utils import InferenceServerException

    where = f"{settings.protocol}://{settings.address}"
    if isinstance(error, InferenceServerException):
        status = str(error.status() or "")
        message = _scrub(str(error.message() or error), settings.token)
        lowered = message.lower()
        if status in ("401", "403") or "restricted" in lowered:
            hint = "no token was sent" if not settings.token else "the token was refused"
            return TransportError(
                UnauthorizedError(
                    f"{where} refused {what}: {hint} (server says: {message}); pass the API "
                    f"token the server was started with (token=... or ${TOKEN_ENV})"
                ),
                transient=False,
            )
        if status in ("404", "StatusCode.NOT_FOUND") or any(
            phrase in lowered for phrase in ("unknown model", "not ready", "no available version")
        ):
            # A model that exists but has no loaded version is being (un)loaded: a server
            # shutting down or restarting, a new version coming in. That passes; a name the
            # server does not know at all does not.
            loading = "no available version" in lowered or "not ready" in lowered
            return TransportError(
                ModelNotReadyError(
                    f"{where}: model {settings.model!r} is not ready for {what} ({message})"
                ),
                transient=loading and "not found" not in lowered,
            )
        if status in ("400", "StatusCode.INVALID_ARGUMENT"):
            return TransportError(BadInputError(f"{where} rejected {what}: {message}"), False)
        if status == "StatusCode.DEADLINE_EXCEEDED" or "timed out" in lowered:
            return TransportError(
                ServerUnreachableError(
                    f"{where} did not answer {what} within {settings.timeout:g} s ({message})"
                ),
                transient=False,
            )
        if status in ("503", "StatusCode.UNAVAILABLE") or any(
            phrase in lowered
            for phrase in ("failed to connect", "connection refused", "connection reset", "socket")
        ):
            return TransportError(
                ServerUnreachableError(f"{where} is unreachable for {what} ({message})"),
                transient=True,
            )
        return TransportError(
            InferenceError(f"{where} failed {what} (status {status or '?'}: {message})"), False
        )
    if isinstance(error, TimeoutError | socket.timeout) or type(error).__name__ == "Timeout":
        return TransportError(
            ServerUnreachableError(f"{where} did not answer {what} within {settings.timeout:g} s"),
            transient=False,
        )
    if isinstance(error, OSError):
        reason = _scrub(error.strerror or str(error) or type(error).__name__, settings.token)
        return TransportError(
            ServerUnreachableError(f"{where} is unreachable for {what} ({reason})"),
            transient=True,
        )
    # geventhttpclient reports a connection closed mid-response with its own exception types.
    name = type(error).__name__
    message = _scrub(str(error), settings.token)
    if "closed" in message.lower() or "parse" in name.lower() or "HTTPException" in name:
        return TransportError(
            ServerUnreachableError(f"{where} dropped the connection during {what} ({name})"),
            transient=True,
        )
    return TransportError(InferenceError(f"{where} failed {what}: {name}: {message}"), False)


def call(settings: TransportSettings, what: str, function: Callable[[], T]) -> T:
    try:
        return function()
    except TransportError:
        raise
    except Exception as error:
        raise classify(error, settings, what) from None
