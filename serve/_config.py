"""``ServeConfig``: everything the serve stage needs, built once by the CLI and passed down.

The defaults are the secure ones: loopback only, model control mode ``none`` (the served models
cannot be changed through the API), client shared memory locked, strict readiness, and the
metrics endpoint on loopback whatever ``host`` is (Triton cannot put a token on metrics, which
name the models, their versions and request counts). A repository
is a local folder or ``s3://bucket/prefix`` (with ``s3_endpoint_url`` for S3-compatible stores).

Example:
    >>> config = ServeConfig("model_repository", http_port=0, grpc_port=0, metrics_port=0)
    >>> config.model_config_name
    'embedded'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from detstack.errors import ConfigError
from serve._token import ApiToken

__all__ = [
    "CONTAINER_CONFIG_NAME",
    "DEFAULT_IMAGE",
    "EMBEDDED_CONFIG_NAME",
    "METRICS_LOOPBACK",
    "TRITON_PORTS",
    "Mode",
    "ServeConfig",
]

Mode = Literal["embedded", "container"]

#: ``<model>/configs/embedded.pbtxt``: python backend running onnxruntime (the pytriton binary).
EMBEDDED_CONFIG_NAME = "embedded"
#: ``<model>/configs/gpu.pbtxt``: onnxruntime backend on GPU (NVIDIA's Triton container).
CONTAINER_CONFIG_NAME = "gpu"
#: Where metrics listen unless ``metrics_host`` says otherwise (they carry no token).
METRICS_LOOPBACK = "127.0.0.1"
#: NVIDIA's Triton image of the same release as the pytriton binary (Triton 2.51 = 24.10).
DEFAULT_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
#: Triton's own ports inside that image (a container's or a pod's); host ports map onto them.
TRITON_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}


def _check_port(name: str, port: int) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"{name} must be a port number 0-65535 (0 = any free port), got {port!r}")


@dataclass(frozen=True)
class ServeConfig:
    """How to serve a model repository with Triton.

    Attributes:
        repository: local folder or ``s3://bucket/prefix``.
        mode: ``"embedded"`` (the tritonserver binary of nvidia-pytriton, CPU) or
            ``"container"`` (NVIDIA's Triton image on GPU, through docker).
        host: address the endpoints bind to; ``127.0.0.1`` keeps them local.
        http_port, grpc_port, metrics_port: ports; 0 picks a free port at start (embedded only).
        metrics: serve Prometheus metrics at all (``False``: Triton's ``--allow-metrics=false``).
        metrics_host: address the metrics endpoint binds to. ``None`` (default) keeps it private
            whatever ``host`` is: ``127.0.0.1`` in embedded mode; in container mode loopback
            *inside* the container, and the port is not published. Metrics answer without the
            token, so only name a reachable address on purpose.
        token: API token required by every API except health; ``None`` leaves them open.
        poll: watch the repository and load new versions (model control mode ``poll``).
        poll_interval_s: seconds between two polls of the repository.
        allow_shared_memory: let clients register shared-memory regions (locked by default).
        s3_endpoint_url: ``http(s)://host:port`` of an S3-compatible store (MinIO, moto, ...).
        model_config_name: Triton's ``--model-config-name``; ``None`` picks the mode's flavour.
        run_dir: folder for the server log and launch files; ``None`` makes a temporary one.
        startup_timeout_s: how long to wait for the server and every model to be ready.
        exit_timeout_s: on stop, how long in-flight requests may take to finish.
        image: container image (container mode).
        gpus: docker ``--gpus`` value (container mode).
        auto_complete_config: let Triton complete incomplete model configs; ``None`` = off in
            embedded mode (export writes complete configs; start-up is ~2x faster: 1.3 s instead
            of 3.2 s for the tiny model here) and Triton's default (on) in container mode.
    """

    repository: str
    mode: Mode = "embedded"
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    metrics: bool = True
    metrics_host: str | None = None
    token: ApiToken | None = field(default=None, repr=False)
    poll: bool = False
    poll_interval_s: int = 5
    allow_shared_memory: bool = False
    s3_endpoint_url: str | None = None
    model_config_name: str | None = None
    run_dir: Path | None = None
    startup_timeout_s: float = 120.0
    exit_timeout_s: int = 30
    image: str = DEFAULT_IMAGE
    gpus: str = "all"
    auto_complete_config: bool | None = None

    def __post_init__(self) -> None:
        if not str(self.repository).strip():
            raise ConfigError("repository must be a folder or an s3://bucket/prefix URL, got ''")
        if self.mode not in ("embedded", "container"):
            raise ConfigError(f"mode must be 'embedded' or 'container', got {self.mode!r}")
        for name in ("http_port", "grpc_port", "metrics_port"):
            _check_port(name.replace("_", "-"), getattr(self, name))
        fixed = [p for p in (self.http_port, self.grpc_port, self.metrics_port) if p != 0]
        if len(fixed) != len(set(fixed)):
            raise ConfigError(
                "--http-port, --grpc-port and --metrics-port must differ, got "
                f"{self.http_port}, {self.grpc_port}, {self.metrics_port}"
            )
        if self.token is not None and not isinstance(self.token, ApiToken):
            raise ConfigError("token must be an ApiToken (see serve.load_token)")
        if isinstance(self.poll_interval_s, bool) or not (
            isinstance(self.poll_interval_s, int) and self.poll_interval_s >= 1
        ):
            raise ConfigError(
                "poll interval must be a whole number of seconds >= 1, "
                f"got {self.poll_interval_s!r}"
            )
        if not self.startup_timeout_s > 0:
            raise ConfigError(
                f"startup timeout must be > 0 seconds, got {self.startup_timeout_s!r}"
            )
        if isinstance(self.exit_timeout_s, bool) or not (
            isinstance(self.exit_timeout_s, int) and self.exit_timeout_s >= 0
        ):
            raise ConfigError(
                f"exit timeout must be a whole number of seconds >= 0, got {self.exit_timeout_s!r}"
            )
        if not self.host or any(c.isspace() for c in self.host):
            raise ConfigError(
                f"host must be an address such as 127.0.0.1 or 0.0.0.0, got {self.host!r}"
            )
        if self.metrics_host is not None and (
            not self.metrics_host or any(c.isspace() for c in self.metrics_host)
        ):
            raise ConfigError(
                f"metrics address must be an address such as 127.0.0.1, got {self.metrics_host!r}"
            )
        if not isinstance(self.metrics, bool):
            raise ConfigError(f"metrics must be True or False, got {self.metrics!r}")
        if self.s3_endpoint_url is not None and not self.is_s3:
            raise ConfigError(
                "--s3-endpoint-url is only used with an s3:// repository, "
                f"got repository {self.repository!r}"
            )
        if self.model_config_name is not None and (
            not self.model_config_name
            or any(c.isspace() or c in "/\\" for c in self.model_config_name)
        ):
            raise ConfigError(
                "model config name must be a plain name such as 'embedded', "
                f"got {self.model_config_name!r}"
            )

    @property
    def metrics_address(self) -> str:
        """Where the embedded server's metrics listen: ``metrics_host``, else loopback."""
        return self.metrics_host if self.metrics_host is not None else METRICS_LOOPBACK

    @property
    def is_s3(self) -> bool:
        """Whether the repository is an ``s3://`` URL."""
        return str(self.repository).startswith("s3://")

    @property
    def auto_complete(self) -> bool:
        """Whether Triton may complete model configs (see ``auto_complete_config``)."""
        if self.auto_complete_config is not None:
            return self.auto_complete_config
        return self.mode == "container"

    @property
    def config_name(self) -> str:
        """The ``--model-config-name`` to use: given, or the flavour of the mode."""
        if self.model_config_name:
            return self.model_config_name
        return EMBEDDED_CONFIG_NAME if self.mode == "embedded" else CONTAINER_CONFIG_NAME
