"""Host the demo page's application on uvicorn, with bounded time and resources per client.

uvicorn (HTTP/1.1 through h11) frames every request by its ``Content-Length`` or chunks, so an
unread body is never taken for a second request. On top of uvicorn's own limits (the keep-alive
timeout, ``limit_concurrency``, a 16 KiB bound on the request line and headers) this module adds:

* a request deadline: a connection that has not sent a whole request within
  ``request_timeout_s`` of opening (or of its last answer) is closed, so a client that stalls or
  trickles bytes holds nothing for long (uvicorn itself waits for headers forever);
* the security headers on every answer, uvicorn's own (400 for malformed HTTP, 503 over the
  concurrency limit, 500) included;
* no threads per connection: blocking work runs on a pool of ``workers`` threads.

Example:
    >>> server = create_app(DemoConfig(port=0))        # doctest: +SKIP
    >>> print(server.url); server.serve_forever()        # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from functools import partial
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from demo._app import build_app
from demo._config import DemoConfig
from demo._http import SECURITY_HEADERS
from demo._inference import Predictor, predict_image
from detstack.errors import ConfigError

__all__ = ["DemoServer", "create_app"]

logger = logging.getLogger(__name__)

#: Longest request line plus headers; longer ones get a 400 (h11 counts them as they come).
_MAX_HEAD_BYTES = 16 * 1024
#: How long a shutdown waits for requests in progress before cancelling them.
_GRACEFUL_SHUTDOWN_S = 5.0
_ENCODED_SECURITY_HEADERS = [
    (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in SECURITY_HEADERS
]
_BAD_REQUEST_BODY = json.dumps(
    {
        "ok": False,
        "error": {
            "kind": "bad_request",
            "title": "Bad request",
            "message": "the request is not valid HTTP/1.1 (or its headers are too long)",
        },
    }
).encode("ascii")


class _Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request deadline and secured protocol-error answers."""

    def __init__(self, *args: Any, request_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._request_timeout_s = request_timeout_s
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_deadline()

    def _arm_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(self._request_timeout_s, self._on_deadline)

    def _on_deadline(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # The application is answering; it bounds its own time (body deadline, Triton
            # timeout). Look again later.
            self._arm_deadline()
            return
        # No whole request since the connection opened or since the last answer (headers
        # trickling in, or the rest of a refused body): close it.
        self.logger.info("closing a connection that sent no whole request in time")
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to malformed HTTP, with the security headers and a JSON body."""
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            self.transport.close()
            return
        headers = [
            (b"content-type", b"application/json; charset=utf-8"),
            (b"connection", b"close"),
            *_ENCODED_SECURITY_HEADERS,
        ]
        for event in (
            h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
            h11.Data(data=_BAD_REQUEST_BODY),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event))
        self.transport.close()


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, address = infos[0]
        dualstack = family == socket.AF_INET6 and host == "::" and socket.has_dualstack_ipv6()
        sock = socket.create_server(address[:2], family=family, dualstack_ipv6=dualstack)
    except (OSError, UnicodeError) as error:
        reason = getattr(error, "strerror", None) or error
        raise ConfigError(
            f"cannot listen on {host}:{port} ({reason}); choose another --port or --host"
        ) from None
    sock.setblocking(False)
    return sock


class DemoServer:
    """The demo page bound to its address; :meth:`serve_forever` serves it (blocking).

    The interface follows :class:`socketserver.BaseServer`: ``serve_forever()`` in one thread,
    ``shutdown()`` from another (it waits until serving has stopped), then ``server_close()``.
    """

    def __init__(self, config: DemoConfig, predictor: Predictor = predict_image) -> None:
        self.config = config
        self._socket = _bind(config.host, config.port)
        self.server_address: tuple[str, int] = self._socket.getsockname()[:2]
        uvicorn_config = uvicorn.Config(
            build_app(config, predictor),
            http=partial(_Protocol, request_timeout_s=config.request_timeout_s),  # type: ignore[arg-type]
            ws="none",
            lifespan="off",
            loop="asyncio",
            interface="asgi3",
            log_config=None,
            access_log=True,
            proxy_headers=False,
            server_header=False,
            headers=list(SECURITY_HEADERS),
            limit_concurrency=config.max_connections,
            timeout_keep_alive=config.keep_alive_s,  # type: ignore[arg-type]
            timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_S,  # type: ignore[arg-type]
            h11_max_incomplete_event_size=_MAX_HEAD_BYTES,
        )
        self._server = uvicorn.Server(uvicorn_config)
        self._serving = threading.Event()
        self._stopped = threading.Event()

    @property
    def url(self) -> str:
        """The page's address, e.g. ``http://127.0.0.1:8080/``."""
        host, port = self.server_address
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/"

    def serve_forever(self) -> None:
        """Serve until :meth:`shutdown` (or Ctrl-C in the main thread)."""
        self._serving.set()
        try:
            self._server.run(sockets=[self._socket])
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop serving and wait until :meth:`serve_forever` has returned."""
        self._server.should_exit = True
        if self._serving.is_set():
            self._stopped.wait()

    def server_close(self) -> None:
        """Close the listening socket."""
        self._socket.close()


def create_app(config: DemoConfig, predictor: Predictor = predict_image) -> DemoServer:
    """Bind the demo server (not yet serving: call ``serve_forever()``, ``shutdown()`` to stop).

    Raises:
        ConfigError: the address cannot be bound (port in use, unknown host).
    """
    return DemoServer(config, predictor)
