"""``POST /api/predict``: read the form within limits, check it, predict on a bounded pool.

Errors of the page's own checks (a bad threshold, an endpoint off the allow-list, a file that is
not an image) are answered with their message, which names the bad value. Errors from the
endpoint are summarised: whatever answered there may not be Triton, and passing its words back
would let the page read (and port-scan) local services; they go to the log.

Example:
    >>> route = PredictRoute(DemoConfig(port=0), predict_image)   # doctest: +SKIP
    >>> Route("/api/predict", route.handle, methods=["POST"])     # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from typing import Any

import anyio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from demo._config import DemoConfig
from demo._endpoints import (
    AllowRule,
    Endpoint,
    EndpointNotAllowedError,
    ResolvedEndpoint,
    check_endpoint,
    check_model_name,
    parse_allow_list,
    parse_endpoint,
)
from demo._form import FileTooLargeError, FormData, FormError, FormLimits, FormReader
from demo._http import RequestError, drain
from demo._inference import Predictor, make_preview
from detstack.errors import (
    BadInputError,
    ConfigError,
    DetstackError,
    ImageDecodeError,
    ModelNotReadyError,
    ServerUnreachableError,
    UnauthorizedError,
)
from detstack.tokens import check_header_token

__all__ = ["PredictRoute"]

logger = logging.getLogger(__name__)

_MAX_TOKEN_CHARS = 4096
_UPLOADS_PER_WORKER = 4
#: A body refused as too large is read and dropped up to this size before the 413 is sent.
_DRAIN_LIMIT_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class _Job:
    """One validated prediction request."""

    endpoint: Endpoint
    model: str
    token: str | None
    threshold: float
    filename: str
    data: bytes


class PredictRoute:
    """``POST /api/predict``: read the form, then run the blocking work on a bounded pool."""

    def __init__(self, config: DemoConfig, predictor: Predictor) -> None:
        self.config = config
        self.predictor = predictor
        self.rules: tuple[AllowRule, ...] = parse_allow_list(config.endpoint_allow_list)
        self.limits = FormLimits(max_file_bytes=config.max_upload_bytes)
        self.workers = anyio.CapacityLimiter(config.workers)
        # Uploads held in memory at once (read, waiting for a worker, or predicting): with the
        # size limit, this bounds the memory all uploads together can take.
        self.uploads = anyio.CapacityLimiter(_UPLOADS_PER_WORKER * config.workers)

    async def handle(self, request: Request) -> Response:
        try:
            async with self.uploads:
                form = await self._read_form(request)
                job = self._job(form)
                payload = await anyio.to_thread.run_sync(
                    partial(self._run, job), limiter=self.workers
                )
        except RequestError as error:
            return error.response()
        return JSONResponse(payload)

    async def _read_form(self, request: Request) -> FormData:
        declared = request.headers.get("content-length")
        if declared is not None and not (declared.isascii() and declared.isdigit()):
            raise RequestError(  # h11 refuses these already; this is the page's own guard
                HTTPStatus.BAD_REQUEST, "bad_request", "Bad request", "invalid Content-Length"
            )
        complete = False  # whether the whole body has been received

        async def rest_dropped(limit: int) -> bool:
            return complete or await drain(
                request.headers, request.receive, limit, self.config.request_timeout_s
            )

        try:
            if declared is not None and (
                len(declared) > 15 or int(declared) > self.limits.max_body_bytes
            ):
                size = f"{int(declared) / 1048576:.1f} MB" if len(declared) <= 15 else "huge"
                raise FileTooLargeError(
                    f"the upload is {size}; this page accepts images up to "
                    f"{self.limits.max_file_bytes / 1048576:.1f} MB"
                )
            reader = FormReader(request.headers.get("content-type", ""), self.limits)
            with anyio.fail_after(self.config.request_timeout_s):
                while not complete:
                    message = await request.receive()
                    if message["type"] != "http.request":
                        raise ClientDisconnect()
                    complete = not message.get("more_body", False)
                    reader.feed(message.get("body", b""))
            return reader.finish()
        except FileTooLargeError as error:
            raise RequestError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                "too_large",
                "Image too large",
                str(error),
                close=not await rest_dropped(_DRAIN_LIMIT_BYTES),
            ) from None
        except FormError as error:
            raise RequestError(
                HTTPStatus.BAD_REQUEST,
                "bad_request",
                "Bad request",
                str(error),
                close=not await rest_dropped(self.limits.max_body_bytes),
            ) from None
        except TimeoutError:
            raise RequestError(
                HTTPStatus.REQUEST_TIMEOUT,
                "timeout",
                "Upload too slow",
                f"the upload did not arrive within {self.config.request_timeout_s:g} s",
                close=True,
            ) from None
        except ClientDisconnect:
            raise RequestError(
                HTTPStatus.BAD_REQUEST,
                "bad_request",
                "Bad request",
                "the upload was cut off",
                close=True,
            ) from None

    def _job(self, form: FormData) -> _Job:
        config = self.config
        image = form.files.get("image")
        try:
            if image is None or not image.data:
                raise ImageDecodeError("no image was uploaded; choose an image file")
            threshold = _threshold(form.fields.get("threshold", "0.5"))
            endpoint = parse_endpoint(form.fields.get("endpoint", config.default_endpoint))
            model = endpoint.model or form.fields.get("model", "").strip() or config.default_model
            check_model_name(model, "(model field)")
            token = _token(form.fields.get("token", ""))
        except DetstackError as error:
            raise _own_error(error) from None
        return _Job(endpoint, model, token, threshold, image.filename, image.data)

    def _run(self, job: _Job) -> dict[str, Any]:
        """The blocking part, on a worker thread: allow-list (DNS), preview, prediction."""
        config = self.config
        try:
            resolved = check_endpoint(job.endpoint, self.rules)
            started = time.perf_counter()
            preview = make_preview(
                job.data, f"uploaded file {job.filename!r}", max_pixels=config.max_pixels
            )
        except DetstackError as error:
            raise _own_error(error) from None
        try:
            outcome = self.predictor(resolved, job.model, job.token, job.data, config.timeout_s)
        except DetstackError as error:
            raise _upstream_error(error, resolved, job, config.timeout_s) from None
        except Exception:
            logger.exception("unexpected error while predicting")
            raise RequestError(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
                "the demo server failed unexpectedly; see its log",
            ) from None
        total_ms = (time.perf_counter() - started) * 1000.0
        detections = [d for d in outcome.detections if d.score >= job.threshold]
        return {
            "ok": True,
            "model": job.model,
            "model_version": outcome.model_version,
            "protocol": job.endpoint.protocol,
            "width": preview.width,
            "height": preview.height,
            "threshold": job.threshold,
            "image": preview.url,
            "detections": [d.to_json() for d in detections],
            "hidden_below_threshold": len(outcome.detections) - len(detections),
            "latency_ms": {"triton": round(outcome.triton_ms, 2), "total": round(total_ms, 2)},
        }


def _threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        shown = text if len(text) <= 32 else text[:32] + "..."
        raise ConfigError(f"score threshold {shown!r} is not a number; expected 0..1") from None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"score threshold {value} is outside 0..1")
    return value


def _token(text: str) -> str | None:
    """The token as sent, or ``None``; it goes into a request header, so visible ASCII only."""
    token = text.strip()
    if not token:
        return None
    if len(token) > _MAX_TOKEN_CHARS:
        raise ConfigError(f"the API token must be up to {_MAX_TOKEN_CHARS} characters")
    return check_header_token(token, "the form")


# (exception type, status, kind, title) for the errors our own checks raise.
_OWN_ERRORS: list[tuple[type[DetstackError], HTTPStatus, str, str]] = [
    (EndpointNotAllowedError, HTTPStatus.FORBIDDEN, "endpoint_not_allowed", "Endpoint not allowed"),
    (ServerUnreachableError, HTTPStatus.BAD_GATEWAY, "unreachable", "Endpoint unreachable"),
    (ImageDecodeError, HTTPStatus.UNPROCESSABLE_ENTITY, "bad_image", "Image cannot be decoded"),
    (ConfigError, HTTPStatus.BAD_REQUEST, "bad_request", "Invalid input"),
]


def _own_error(error: DetstackError) -> RequestError:
    """An error of the page's own checks: its message names the bad value, so it is shown."""
    for error_type, status, kind, title in _OWN_ERRORS:
        if isinstance(error, error_type):
            return RequestError(status, kind, title, str(error))
    return RequestError(HTTPStatus.BAD_REQUEST, "bad_request", "Invalid input", str(error))


def _upstream_error(
    error: DetstackError, resolved: ResolvedEndpoint, job: _Job, timeout_s: float
) -> RequestError:
    """Summarise what went wrong at the endpoint; its own words go to the log only.

    Whatever answered may not be Triton: passing its text back would let the page read (and
    port-scan) local services.
    """
    where = f"{job.endpoint.protocol}://{resolved.address}"
    detail = str(error)
    if job.token:
        detail = detail.replace(job.token, "***")
    logger.warning(
        "prediction through %s failed: %s: %r", where, type(error).__name__, detail[:500]
    )
    if isinstance(error, UnauthorizedError):
        reason = "the API token was not accepted" if job.token else "it needs an API token"
        return RequestError(
            HTTPStatus.UNAUTHORIZED,
            "unauthorized",
            "API token refused",
            f"{where} refused the request: {reason}",
        )
    if isinstance(error, ModelNotReadyError):
        return RequestError(
            HTTPStatus.NOT_FOUND,
            "model_not_ready",
            "Model not available",
            f"{where} has no ready model {job.model!r} (unknown, or still loading)",
        )
    if isinstance(error, ServerUnreachableError):
        return RequestError(
            HTTPStatus.BAD_GATEWAY,
            "unreachable",
            "Endpoint unreachable",
            f"no answer from {where} within {timeout_s:g} s, or the connection was refused; "
            "is Triton running there?",
        )
    if isinstance(error, ImageDecodeError):
        return RequestError(
            HTTPStatus.UNPROCESSABLE_ENTITY,
            "bad_image",
            "Image cannot be decoded",
            f"uploaded file {job.filename!r} cannot be decoded as an image",
        )
    if isinstance(error, BadInputError):
        return RequestError(
            HTTPStatus.UNPROCESSABLE_ENTITY,
            "bad_image",
            "Image rejected by the model",
            f"{where} refused uploaded file {job.filename!r} as input of model {job.model!r} "
            "(too large for the protocol, or not an image it accepts)",
        )
    return RequestError(
        HTTPStatus.BAD_GATEWAY,
        "inference_failed",
        "Prediction failed",
        f"{where} did not answer as a Triton server with model {job.model!r} would; "
        "the demo server's log has the details",
    )
