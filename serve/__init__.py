"""Serve stage: a real Triton server on a model repository, with an API token.

Two worlds: **embedded** runs the ``tritonserver`` binary shipped by ``nvidia-pytriton`` (CPU,
python backend running onnxruntime) as a child process; **container** prints or runs the
``docker run`` command (and writes a compose file) for NVIDIA's Triton image on GPU.

Example:
    >>> from serve import ServeConfig, TritonServer, load_token
    >>> config = ServeConfig("model_repository", token=load_token(), http_port=0, grpc_port=0,
    ...                      metrics_port=0)
    >>> with TritonServer(config) as server:                                # doctest: +SKIP
    ...     print(server.endpoints.http, server.endpoints.grpc, server.models)
"""

import lazy_loader

# Names load on first use, so that `detstack --help` (which imports every package to register
# its subcommands) does not pay for torch, pandas or tritonclient.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "_config": ["DEFAULT_IMAGE", "ServeConfig"],
        "_container": ["container_command", "container_command_line", "write_compose_file"],
        "_server": ["Endpoints", "TritonServer"],
        "_token": [
            "GRPC_TOKEN_HEADER",
            "HTTP_TOKEN_HEADER",
            "TOKEN_ENV",
            "ApiToken",
            "load_token",
            "token_headers",
        ],
    },
)
