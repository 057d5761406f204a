"""The demo web page: enter a Triton endpoint and token, upload an image, see the detections.

The page's own server (Starlette on uvicorn) calls Triton through
:class:`client.DetectionClient`; the browser never talks to Triton and never stores the token.

Example:
    >>> from demo import DemoConfig, create_app
    >>> server = create_app(DemoConfig(port=0))      # doctest: +SKIP
    >>> print(server.url); server.serve_forever()      # doctest: +SKIP
"""

from demo._config import DEFAULT_ALLOWED_ENDPOINTS, DemoConfig
from demo._endpoints import EndpointNotAllowedError
from demo._server import DemoServer, create_app

__all__ = [
    "DEFAULT_ALLOWED_ENDPOINTS",
    "DemoConfig",
    "DemoServer",
    "EndpointNotAllowedError",
    "create_app",
]
