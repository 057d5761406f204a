"""The demo web page: enter a Triton endpoint and token, upload an image, see the detections.

The page's own server (Starlette on uvicorn) calls Triton through
:class:`client.DetectionClient`; the browser never talks to Triton and never stores the token.

Example:
    >>> from demo import DemoConfig, create_app
    >>> server = create_app(DemoConfig(port=0))      # doctest: +SKIP
    >>> print(server.url); server.serve_forever()      # doctest: +SKIP
"""

import lazy_loader

# Names load on first use, so that `detstack --help` (which imports every package to register
# its subcommands) does not pay for torch, pandas or tritonclient.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "_config": ["DEFAULT_ALLOWED_ENDPOINTS", "DemoConfig"],
        "_endpoints": ["EndpointNotAllowedError"],
        "_server": ["DemoServer", "create_app"],
    },
)
