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

from serve._config import DEFAULT_IMAGE, ServeConfig
from serve._container import container_command, container_command_line, write_compose_file
from serve._server import Endpoints, TritonServer
from serve._token import (
    GRPC_TOKEN_HEADER,
    HTTP_TOKEN_HEADER,
    TOKEN_ENV,
    ApiToken,
    load_token,
    token_headers,
)

__all__ = [
    "DEFAULT_IMAGE",
    "GRPC_TOKEN_HEADER",
    "HTTP_TOKEN_HEADER",
    "TOKEN_ENV",
    "ApiToken",
    "Endpoints",
    "ServeConfig",
    "TritonServer",
    "container_command",
    "container_command_line",
    "load_token",
    "token_headers",
    "write_compose_file",
]
