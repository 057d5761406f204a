"""The container world: the exact ``docker run`` command and a compose file for NVIDIA's Triton.

On a GPU machine users run NVIDIA's Triton image with the GPU flavour of every model
(``--model-config-name=gpu``: onnxruntime backend, ``KIND_GPU``). The command we print holds no
secret, so it can be pasted into a terminal, a ticket or a CI file:

* the token travels as ``-e DETSTACK_API_TOKEN`` (its value taken from the caller's environment)
  and is expanded *inside* the container by ``sh -c``, so it is not on docker's command line;
* the header value that locks the disabled APIs (shared memory, and trace/logging without a
  token) is drawn from ``/dev/urandom`` inside the container at each start.

A local repository is mounted read-only at ``/models``; an ``s3://`` repository is read by
Triton itself, with the ``AWS_*`` variables passed through by name.

Metrics carry no token (Triton cannot require one there), so unless ``metrics_host`` is given
they listen on loopback *inside* the container and their port is not published: neither the
host's network nor other containers can read them (``docker exec <container> curl
localhost:8002/metrics`` can). With ``metrics_host`` they bind every address in the container and
are published on ``metrics_host``; ``metrics=False`` turns them off.

Example:
    >>> config = ServeConfig("model_repository", mode="container")
    >>> print(container_command_line(config))                   # doctest: +SKIP
    docker run --rm --gpus all ... nvcr.io/nvidia/tritonserver:24.10-py3 sh -c '...'
"""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

from detstack.errors import ConfigError, RepositoryError
from serve._config import TRITON_PORTS, ServeConfig
from serve._marker import ours_or_absent
from serve._repository import S3_VARIABLES, served_repository
from serve._token import TOKEN_ENV
from serve._triton_args import (
    LOCK_PLACEHOLDER,
    RANDOM_LOCK_SHELL,
    TOKEN_PLACEHOLDER,
    placeholder_token,
    server_arguments,
    shell_words,
)

__all__ = [
    "COMPOSE_MARKER",
    "compose_document",
    "container_command",
    "container_command_line",
    "write_compose_file",
]

#: Where a local repository is mounted in the container.
CONTAINER_REPOSITORY = "/models"
#: First line of every compose file we write; we only ever overwrite a file that starts with it.
COMPOSE_MARKER = "# Written by `detstack serve --mode container`"
_LOCK_VARIABLE = "DETSTACK_LOCK"


def _published(config: ServeConfig) -> tuple[str, ...]:
    """The ports published on the host: metrics only when asked (they carry no token)."""
    metrics = config.metrics and config.metrics_host is not None
    return tuple(name for name in TRITON_PORTS if name != "metrics" or metrics)


def _port_mappings(config: ServeConfig) -> list[str]:
    """``host address:host port:container port`` of every published port."""
    ports = _check_ports(config)
    return [
        f"{config.metrics_host if name == 'metrics' else config.host}:{port}:{TRITON_PORTS[name]}"
        for name, port in ports.items()
    ]


def _check_ports(config: ServeConfig) -> dict[str, int]:
    ports = {name: getattr(config, f"{name}_port") for name in _published(config)}
    zero = [name for name, port in ports.items() if port == 0]
    if zero:
        raise ConfigError(
            f"container mode publishes fixed host ports; --{zero[0]}-port 0 (any free port) only "
            "works in embedded mode"
        )
    return ports


def _repository_argument(config: ServeConfig) -> tuple[str, Path | None]:
    """Triton's ``--model-repository`` in the container, and the host folder to mount."""
    repository, root = served_repository(config, available_backends=None)
    return (repository, None) if root is None else (CONTAINER_REPOSITORY, root)


def _server_script(config: ServeConfig, repository: str, dollar: str = "$") -> str:
    """The ``sh -c`` script that draws the lock value and execs tritonserver."""
    # A stand-in token builds the arguments: the script only names the variable.
    scripted = (
        config if config.token is None else dataclasses.replace(config, token=placeholder_token())
    )
    arguments = server_arguments(
        scripted,
        repository=repository,
        http_port=TRITON_PORTS["http"],
        grpc_port=TRITON_PORTS["grpc"],
        metrics_port=TRITON_PORTS["metrics"],
        lock_value=LOCK_PLACEHOLDER,
        host="0.0.0.0",
        # Published (asked for): every address in the container; else its loopback only.
        metrics_host="0.0.0.0" if "metrics" in _published(config) else "127.0.0.1",
    )
    # The shell in the container expands the variables.
    quoted = shell_words(
        arguments,
        {
            LOCK_PLACEHOLDER: f"{dollar}{{{_LOCK_VARIABLE}}}",
            TOKEN_PLACEHOLDER: f"{dollar}{{{TOKEN_ENV}}}",
        },
    )
    draw_lock = f"{_LOCK_VARIABLE}={dollar}({RANDOM_LOCK_SHELL})"
    need_token = ""
    if config.token is not None:
        need_token = f': "{dollar}{{{TOKEN_ENV}:?set {TOKEN_ENV} to the API token}}" && '
    return f"{need_token}{draw_lock} && exec tritonserver " + " ".join(quoted)


def container_command(config: ServeConfig) -> list[str]:
    """The ``docker run`` argv that serves ``config.repository`` with NVIDIA's Triton image.

    Raises:
        ConfigError: a port is 0 (container mode needs fixed ports).
        RepositoryError: a local repository is missing or has no model.
    """
    mappings = _port_mappings(config)
    repository, mount = _repository_argument(config)
    command = ["docker", "run", "--rm", "--gpus", config.gpus]
    # NVIDIA's recommended limits for Triton (python backend shared memory, pinned memory).
    command += ["--shm-size=1g", "--ulimit", "memlock=-1", "--ulimit", "stack=67108864"]
    command += [f"--stop-timeout={config.exit_timeout_s + 10}"]
    for mapping in mappings:
        command += ["-p", mapping]
    if mount is not None:
        command += ["-v", f"{mount}:{CONTAINER_REPOSITORY}:ro"]
    else:
        for variable in S3_VARIABLES:
            command += ["-e", variable]
    if config.token is not None:
        command += ["-e", TOKEN_ENV]
    command += [config.image, "sh", "-c", _server_script(config, repository)]
    return command


def container_command_line(config: ServeConfig) -> str:
    """:func:`container_command` as one line to paste into a POSIX shell."""
    return shlex.join(container_command(config))


def _gpu_reservation(gpus: str) -> dict:
    device: dict = {"driver": "nvidia", "capabilities": ["gpu"]}
    if gpus == "all":
        device["count"] = "all"
    elif gpus.isdigit():
        device["count"] = int(gpus)
    elif gpus.startswith("device="):
        device["device_ids"] = [d.strip() for d in gpus[len("device=") :].strip("\"'").split(",")]
    else:
        raise ConfigError(f"--gpus must be 'all', a number or device=0,1, got {gpus!r}")
    return {"resources": {"reservations": {"devices": [device]}}}


def compose_document(config: ServeConfig) -> dict:
    """The compose file (as data) equivalent to :func:`container_command`."""
    mappings = _port_mappings(config)
    repository, mount = _repository_argument(config)
    service: dict = {
        "image": config.image,
        # "$$": compose passes a literal "$" to the shell in the container.
        "command": ["sh", "-c", _server_script(config, repository, dollar="$$")],
        "ports": mappings,
        "shm_size": "1gb",
        "ulimits": {"memlock": -1, "stack": 67108864},
        "stop_grace_period": f"{config.exit_timeout_s + 10}s",
        "restart": "unless-stopped",
        "deploy": _gpu_reservation(config.gpus),
    }
    environment: dict[str, str] = {}
    if mount is not None:
        service["volumes"] = [f"{mount}:{CONTAINER_REPOSITORY}:ro"]
    else:
        environment.update({v: f"${{{v}:-}}" for v in S3_VARIABLES})
    if config.token is not None:
        environment[TOKEN_ENV] = f"${{{TOKEN_ENV}:?set {TOKEN_ENV} to the API token}}"
    if environment:
        service["environment"] = environment
    return {"services": {"triton": service}}


def write_compose_file(config: ServeConfig, path: Path) -> Path:
    """Write the compose file to ``path``; never overwrite a file we did not write.

    Returns:
        ``path``.
    """
    import yaml

    path = Path(path)
    if not ours_or_absent(path, COMPOSE_MARKER):
        raise RepositoryError(
            f"{path} exists and was not written by detstack; "
            "choose another path with --compose-file"
        )
    header = (
        f"{COMPOSE_MARKER} for {config.repository}.\n"
        "# Start: "
        + (f"{TOKEN_ENV}=... " if config.token is not None else "")
        + f"docker compose -f {path.name} up\n"
        "# Health (open): curl -f http://"
        f"{'127.0.0.1' if config.host in ('0.0.0.0', '') else config.host}:{config.http_port}"
        "/v2/health/ready\n"
    )
    body = yaml.safe_dump(compose_document(config), sort_keys=False, width=1000)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + body, encoding="utf-8")
    return path
