"""The demo page's web application (Starlette): its routes and error answers.

Routes::

    GET  /                 the page (static/index.html)
    GET  /static/<file>    its script and style sheet
    GET  /api/config       pre-filled values and limits, as JSON
    GET  /healthz          "ok"
    POST /api/predict      multipart form: endpoint, model, token, threshold, image

Security choices, all on the server side:

* every request must name this page in ``Host``, and a ``POST`` must come from the page's own
  ``Origin`` (:mod:`demo._guard`);
* the endpoint must pass the allow-list (:mod:`demo._endpoints`), so the page is no open proxy,
  and what the endpoint answered is summarised, never passed back (:mod:`demo._predict`);
* the body is parsed by a bounded streaming parser (:mod:`demo._form`) within a deadline;
* the token travels in the POST body only, is never logged, echoed, nor put in a cookie;
* the security headers (:data:`demo._http.SECURITY_HEADERS`, sent on every answer by
  :mod:`demo._server`) forbid caching and framing, and a strict Content-Security-Policy
  (``'self'`` only, no inline script) limits what injected text could do; the page renders
  every server text with ``textContent``.

Example:
    >>> app = build_app(DemoConfig(port=0), predict_image)   # doctest: +SKIP
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from importlib import resources

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from demo._config import DemoConfig
from demo._form import FormLimits
from demo._guard import Guard, HostPolicy
from demo._http import error_response
from demo._inference import Predictor
from demo._predict import PredictRoute

__all__ = ["build_app"]

logger = logging.getLogger(__name__)

_STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/static/demo.js": ("demo.js", "text/javascript; charset=utf-8"),
    "/static/demo.css": ("demo.css", "text/css; charset=utf-8"),
}


def build_app(config: DemoConfig, predictor: Predictor) -> Starlette:
    """The page's ASGI application (served by :class:`demo.DemoServer`)."""
    static = {
        route: (resources.files("demo").joinpath("static", name).read_bytes(), content_type)
        for route, (name, content_type) in _STATIC_FILES.items()
    }

    def static_route(path: str) -> Route:
        body, content_type = static[path]

        async def endpoint(request: Request) -> Response:
            return Response(body, media_type=content_type)

        return Route(path, endpoint, methods=["GET"])

    async def page_config(request: Request) -> Response:
        return JSONResponse(
            {
                "default_endpoint": config.default_endpoint,
                "default_model": config.default_model,
                "max_upload_bytes": config.max_upload_bytes,
                "allowed_endpoints": list(config.endpoint_allow_list),
            }
        )

    async def healthz(request: Request) -> Response:
        return Response(b"ok\n", media_type="text/plain; charset=utf-8")

    async def favicon(request: Request) -> Response:
        return Response(status_code=HTTPStatus.NO_CONTENT)

    async def http_error(request: Request, error: Exception) -> Response:
        status = error.status_code if isinstance(error, HTTPException) else 500
        headers = error.headers if isinstance(error, HTTPException) else None
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        kind = "not_found" if status == 404 else "bad_request"
        message = {404: "no such page", 405: "this method is not allowed here"}.get(
            status, phrase.lower()
        )
        return error_response(status, kind, phrase or f"HTTP {status}", message, headers=headers)

    async def internal_error(request: Request, error: Exception) -> Response:
        logger.error("unexpected error answering %s", request.url.path, exc_info=error)
        return error_response(
            500, "internal", "Internal error", "the demo server failed unexpectedly; see its log"
        )

    routes = [static_route(path) for path in _STATIC_FILES]
    routes += [
        Route("/api/config", page_config, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/favicon.ico", favicon, methods=["GET"]),
        Route("/api/predict", PredictRoute(config, predictor).handle, methods=["POST"]),
    ]
    return Starlette(
        routes=routes,
        middleware=[
            Middleware(
                Guard,
                hosts=HostPolicy.for_config(config),
                drain_bytes=FormLimits(config.max_upload_bytes).max_body_bytes,
                timeout_s=config.request_timeout_s,
            )
        ],
        exception_handlers={HTTPException: http_error, Exception: internal_error},
    )
