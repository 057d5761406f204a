"""The demo page's HTTP server: static page, a config endpoint, and one prediction endpoint.

Standard library only (``http.server``): the page is a tool for showing a model to colleagues,
not a production web service, and it must run on a fresh offline machine.

Routes::

    GET  /                 the page (static/index.html)
    GET  /static/<file>    its script and style sheet
    GET  /api/config       pre-filled values and limits, as JSON
    GET  /healthz          "ok"
    POST /api/predict      multipart form: endpoint, model, token, threshold, image

Security choices, all on the server side:

* the endpoint must pass the allow-list (:mod:`demo._endpoints`), so the page is no open proxy;
* the token travels in the POST body only, is never logged, echoed, nor put in a cookie, and
  every response carries ``Cache-Control: no-store``;
* uploads larger than the limit are refused from ``Content-Length`` before they are read (413);
* cross-site form posts are refused (``Origin`` must be this page), and a strict
  Content-Security-Policy (``'self'`` only, no inline script) limits what injected text could do;
  the page renders every server text with ``textContent``.

Example:
    >>> server = create_app(DemoConfig(port=0))        # doctest: +SKIP
    >>> server.serve_forever()                           # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from demo._config import DemoConfig
from demo._endpoints import (
    AllowRule,
    EndpointNotAllowedError,
    check_endpoint,
    parse_allow_list,
    parse_endpoint,
)
from demo._inference import Predictor, encode_preview, predict_image
from demo._multipart import FormError, parse_form
from detstack.errors import (
    BadInputError,
    ConfigError,
    DetstackError,
    ImageDecodeError,
    InferenceError,
    ModelNotReadyError,
    ServerUnreachableError,
    UnauthorizedError,
)
from detstack.images import decode_image

__all__ = ["DemoServer", "create_app"]

logger = logging.getLogger(__name__)

_STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/static/demo.js": ("demo.js", "text/javascript; charset=utf-8"),
    "/static/demo.css": ("demo.css", "text/css; charset=utf-8"),
}

_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

#: Room for the text fields and multipart boundaries on top of the image itself.
_FORM_OVERHEAD_BYTES = 64 * 1024
#: A refused upload up to this size is read and dropped before the 413 is sent.
_DRAIN_LIMIT_BYTES = 256 * 1024 * 1024

# (HTTP status, kind, title) for every error the page distinguishes.
_ERRORS: list[tuple[type[BaseException], HTTPStatus, str, str]] = [
    (EndpointNotAllowedError, HTTPStatus.FORBIDDEN, "endpoint_not_allowed", "Endpoint not allowed"),
    (UnauthorizedError, HTTPStatus.UNAUTHORIZED, "unauthorized", "API token refused"),
    (ServerUnreachableError, HTTPStatus.BAD_GATEWAY, "unreachable", "Endpoint unreachable"),
    (ModelNotReadyError, HTTPStatus.NOT_FOUND, "model_not_ready", "Model not available"),
    (ImageDecodeError, HTTPStatus.UNPROCESSABLE_ENTITY, "bad_image", "Image cannot be decoded"),
    (BadInputError, HTTPStatus.UNPROCESSABLE_ENTITY, "bad_image", "Image rejected by the model"),
    (InferenceError, HTTPStatus.BAD_GATEWAY, "inference_failed", "Prediction failed"),
    (FormError, HTTPStatus.BAD_REQUEST, "bad_request", "Bad request"),
    (ConfigError, HTTPStatus.BAD_REQUEST, "bad_request", "Invalid input"),
]


class _RequestError(Exception):
    """An error answered with a given status, kind, title and message."""

    def __init__(self, status: HTTPStatus, kind: str, title: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.title, self.message = status, kind, title, message


class DemoServer(ThreadingHTTPServer):
    """A threading HTTP server that carries the demo's configuration to its handlers."""

    daemon_threads = True
    block_on_close = True

    def __init__(self, config: DemoConfig, predictor: Predictor = predict_image) -> None:
        self.config = config
        self.rules: tuple[AllowRule, ...] = parse_allow_list(config.allowed_endpoints)
        self.predictor = predictor
        self._static = {
            route: (resources.files("demo").joinpath("static", name).read_bytes(), content_type)
            for route, (name, content_type) in _STATIC_FILES.items()
        }
        super().__init__((config.host, config.port), _Handler)

    @property
    def url(self) -> str:
        """The page's address, e.g. ``http://127.0.0.1:8080/``."""
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}/"


def create_app(config: DemoConfig, predictor: Predictor = predict_image) -> DemoServer:
    """Bind the demo server (not yet serving: call ``serve_forever()``, ``shutdown()`` to stop).

    Raises:
        ConfigError: the address cannot be bound (port in use, unknown host).
    """
    try:
        return DemoServer(config, predictor)
    except OSError as error:
        raise ConfigError(
            f"cannot listen on {config.host}:{config.port} ({error.strerror or error}); "
            "choose another --port or --host"
        ) from None


class _Handler(BaseHTTPRequestHandler):
    server: DemoServer
    server_version = "detstack-demo"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    # ------------------------------------------------------------------ plumbing

    def log_message(self, format: str, *args: Any) -> None:
        # Only the request line and status are logged: the token lives in the body, never here.
        logger.info("%s %s", self.address_string(), format % args)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in _SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
        body = json.dumps(payload, allow_nan=False).encode("utf-8")
        self._send(status, body, "application/json; charset=utf-8")

    def _send_error(self, error: _RequestError) -> None:
        self._send_json(
            error.status,
            {
                "ok": False,
                "error": {"kind": error.kind, "title": error.title, "message": error.message},
            },
        )

    # ------------------------------------------------------------------ routes

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path in self.server._static:
            body, content_type = self.server._static[path]
            self._send(HTTPStatus.OK, body, content_type)
        elif path == "/api/config":
            config = self.server.config
            self._send_json(
                HTTPStatus.OK,
                {
                    "default_endpoint": config.default_endpoint,
                    "default_model": config.default_model,
                    "max_upload_bytes": config.max_upload_bytes,
                    "allowed_endpoints": list(config.allowed_endpoints),
                },
            )
        elif path == "/favicon.ico":
            self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
        elif path == "/healthz":
            self._send(HTTPStatus.OK, b"ok\n", "text/plain; charset=utf-8")
        else:
            self._send_error(
                _RequestError(HTTPStatus.NOT_FOUND, "not_found", "Not found", "no such page")
            )

    do_HEAD = do_GET  # noqa: N815 - the name http.server dispatches HEAD to

    def do_POST(self) -> None:
        if urlsplit(self.path).path != "/api/predict":
            self._send_error(
                _RequestError(HTTPStatus.NOT_FOUND, "not_found", "Not found", "no such endpoint")
            )
            return
        try:
            self._check_origin()
            body = self._read_body()
            payload = self._predict(body)
        except _RequestError as error:
            if error.status in (HTTPStatus.REQUEST_ENTITY_TOO_LARGE, HTTPStatus.LENGTH_REQUIRED):
                self.close_connection = True  # the unread body must not be parsed as a request
            self._send_error(error)
            return
        self._send_json(HTTPStatus.OK, payload)

    # ------------------------------------------------------------------ predict

    def _check_origin(self) -> None:
        origin = self.headers.get("Origin")
        if origin is None or origin == "null":
            return  # not a browser (curl, tests) or a same-origin request without the header
        host = self.headers.get("Host", "")
        if urlsplit(origin).netloc.lower() != host.lower():
            raise _RequestError(
                HTTPStatus.FORBIDDEN,
                "cross_origin",
                "Cross-site request refused",
                "this page only accepts uploads from itself",
            )

    def _read_body(self) -> bytes:
        length_header = self.headers.get("Content-Length")
        if length_header is None or not length_header.isdigit():
            raise _RequestError(
                HTTPStatus.LENGTH_REQUIRED,
                "bad_request",
                "Length required",
                "the upload must declare its Content-Length",
            )
        length = int(length_header)
        limit = self.server.config.max_upload_bytes
        if length > limit + _FORM_OVERHEAD_BYTES:
            self._discard(length)
            raise _RequestError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                "too_large",
                "Image too large",
                f"the upload is {length / 1048576:.1f} MB; this page accepts images up to "
                f"{limit / 1048576:.1f} MB",
            )
        return self.rfile.read(length)

    def _discard(self, length: int) -> None:
        """Read and drop a refused body (up to a cap) so the client can read the 413.

        A server that answers and closes while the client is still sending makes most clients
        (browsers included) report a broken connection instead of the answer.
        """
        if length > _DRAIN_LIMIT_BYTES:
            return  # too big to be worth reading: the connection is closed after the answer
        remaining = length
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 20))
            if not chunk:
                break
            remaining -= len(chunk)

    def _predict(self, body: bytes) -> dict[str, Any]:
        config = self.server.config
        token = ""
        try:
            form = parse_form(body, self.headers.get("Content-Type", ""))
            token = form.fields.get("token", "").strip()
            image = form.files.get("image")
            if image is None or not image.data:
                raise ImageDecodeError("no image was uploaded; choose an image file")
            if len(image.data) > config.max_upload_bytes:
                raise _RequestError(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    "too_large",
                    "Image too large",
                    f"the image is {len(image.data) / 1048576:.1f} MB; this page accepts images "
                    f"up to {config.max_upload_bytes / 1048576:.1f} MB",
                )
            threshold = _threshold(form.fields.get("threshold", "0.5"))
            endpoint = parse_endpoint(form.fields.get("endpoint", config.default_endpoint))
            model = endpoint.model or form.fields.get("model", "").strip() or config.default_model
            resolved = check_endpoint(endpoint, self.server.rules)
            started = time.perf_counter()
            pixels = decode_image(
                image.data,
                source=f"uploaded file {image.filename!r}",
                max_pixels=config.max_pixels,
            )
            outcome = self.server.predictor(
                resolved, model, token or None, pixels, config.timeout_s
            )
            total_ms = (time.perf_counter() - started) * 1000.0
        except _RequestError:
            raise
        except DetstackError as error:
            raise _classify(error, token) from None
        except Exception:
            logger.exception("unexpected error while predicting")
            raise _RequestError(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
                "the demo server failed unexpectedly; see its log",
            ) from None
        detections = [d for d in outcome.detections if d.score >= threshold]
        height, width = pixels.shape[:2]
        return {
            "ok": True,
            "model": model,
            "model_version": outcome.model_version,
            "protocol": endpoint.protocol,
            "width": width,
            "height": height,
            "threshold": threshold,
            "image": encode_preview(pixels),
            "detections": [d.to_json() for d in detections],
            "hidden_below_threshold": len(outcome.detections) - len(detections),
            "latency_ms": {"triton": round(outcome.triton_ms, 2), "total": round(total_ms, 2)},
        }


def _threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"score threshold {text!r} is not a number; expected 0..1") from None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"score threshold {value} is outside 0..1")
    return value


def _classify(error: DetstackError, token: str) -> _RequestError:
    message = str(error)
    if token:
        message = message.replace(token, "***")  # never echo the token, whatever a layer said
    for error_type, status, kind, title in _ERRORS:
        if isinstance(error, error_type):
            return _RequestError(status, kind, title, message)
    return _RequestError(HTTPStatus.BAD_GATEWAY, "failed", "Request failed", message)
