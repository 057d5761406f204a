"""The demo page's answers: one error shape, the security headers, and dropping a refused body.

Shared by the request guard (:mod:`demo._guard`), the routes (:mod:`demo._app`,
:mod:`demo._predict`) and the server (:mod:`demo._server`, which sends the headers on every
answer, uvicorn's own included).

Example:
    >>> RequestError(404, "not_found", "Not found", "no such page").response().status_code
    404
"""

from __future__ import annotations

import anyio
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.types import Receive

__all__ = ["SECURITY_HEADERS", "RequestError", "drain", "error_response"]

#: Sent on every answer, the framework's and the protocol layer's included.
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    (
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
)


class RequestError(Exception):
    """An error answered with a given status, kind, title and message."""

    def __init__(
        self,
        status: int,
        kind: str,
        title: str,
        message: str,
        *,
        close: bool = False,
    ) -> None:
        super().__init__(message)
        self.status, self.kind, self.title, self.message = status, kind, title, message
        self.close = close

    def response(self, *, close: bool | None = None) -> Response:
        """The JSON answer; ``close`` (default: as raised) ends the connection after it."""
        return error_response(
            self.status,
            self.kind,
            self.title,
            self.message,
            close=self.close if close is None else close,
        )


def error_response(
    status: int,
    kind: str,
    title: str,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    close: bool = False,
) -> Response:
    """The page's one error shape: ``{"ok": false, "error": {kind, title, message}}``."""
    extra = dict(headers or {})
    if close:
        extra["Connection"] = "close"
    return JSONResponse(
        {"ok": False, "error": {"kind": kind, "title": title, "message": message}},
        status_code=status,
        headers=extra,
    )


async def drain(headers: Headers, receive: Receive, max_bytes: int, timeout_s: float) -> bool:
    """Read and drop the rest of a refused body, so that the client can read the answer.

    A server that answers and closes while the client is still sending makes most clients
    (browsers included) report a broken connection instead of the answer. Bounded in bytes and
    time; returns whether the whole body came (else the answer closes the connection).
    """
    declared = headers.get("content-length", "")
    if len(declared) > 15 or (declared.isdigit() and int(declared) > max_bytes):
        return False  # too big to be worth reading: close after the answer
    received = 0
    with anyio.move_on_after(timeout_s):
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return False
            received += len(message.get("body", b""))
            if not message.get("more_body", False):
                return True
            if received > max_bytes:
                return False
    return False
