"""``detstack serve``: a real, secured Triton server on a model repository, in one command.

Embedded (default): start the tritonserver binary of nvidia-pytriton on CPU, wait until every
model is ready, print the endpoints, serve until Ctrl-C or SIGTERM, then stop gracefully
(in-flight requests finish, new ones are refused) and exit 0. Container: print (and with
``--run``, run) the ``docker run`` command for NVIDIA's Triton image on GPU, and write a compose
file.

Example:
    $ export DETSTACK_API_TOKEN=$(python -c "import secrets; print(secrets.token_urlsafe(32))")
    $ detstack serve --repository model_repository
    $ detstack serve --repository model_repository --mode container --compose-file compose.yaml
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

from detstack.errors import ServeError
from detstack.tokens import GRPC_TOKEN_HEADER, TOKEN_ENV, TOKEN_SCHEME

logger = logging.getLogger(__name__)

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands to ``subparsers``."""
    parser = subparsers.add_parser(
        "serve",
        help="serve a model repository with a real Triton server (embedded CPU or GPU container)",
        description=(
            "Serve a model repository with Triton Inference Server. embedded (default): run the "
            "tritonserver binary of the nvidia-pytriton package here, on CPU, with the embedded "
            "flavour of each model (configs/embedded.pbtxt), until Ctrl-C/SIGTERM. container: "
            "print the docker command (and write a compose file) that serves the GPU flavour "
            "(configs/gpu.pbtxt) with NVIDIA's Triton image; --run runs it. With an API token "
            f"every API except health needs the header 'Authorization: {TOKEN_SCHEME} <token>' "
            f"(HTTP) or '{GRPC_TOKEN_HEADER}: {TOKEN_SCHEME} <token>' (gRPC)."
        ),
    )
    parser.add_argument(
        "--repository",
        default="model_repository",
        metavar="PATH_OR_S3_URL",
        help="model repository: a folder or s3://bucket/prefix (default: %(default)s)",
    )
    parser.add_argument(
        "--mode",
        choices=("embedded", "container"),
        default="embedded",
        help="embedded: run tritonserver here on CPU; container: NVIDIA's Triton image on GPU "
        "via docker (default: %(default)s)",
    )
    token = parser.add_mutually_exclusive_group()
    token.add_argument(
        "--token",
        help="API token required by every API except health (at least 16 visible ASCII "
        f"characters). Prefer ${TOKEN_ENV} or --token-file: a flag is visible to other "
        "local users in the process list",
    )
    token.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="read the API token from the first line of FILE",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address the endpoints listen on; 0.0.0.0 exposes them to the network (use a "
        "token then) (default: %(default)s)",
    )
    parser.add_argument(
        "--http-port", type=int, default=8000, help="HTTP port, 0 = any free (default: 8000)"
    )
    parser.add_argument(
        "--grpc-port", type=int, default=8001, help="gRPC port, 0 = any free (default: 8001)"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=8002,
        help="Prometheus metrics port, 0 = any free (default: 8002)",
    )
    metrics = parser.add_mutually_exclusive_group()
    metrics.add_argument(
        "--metrics-address",
        metavar="ADDR",
        help="address the metrics endpoint listens on. Triton cannot require the token on "
        "metrics, and they name the models, their versions and request counts, so by default "
        "they stay on loopback (127.0.0.1) whatever --host is; in container mode they stay "
        "inside the container and the port is not published unless this is given",
    )
    metrics.add_argument(
        "--no-metrics",
        action="store_true",
        help="serve no metrics at all (Triton's --allow-metrics=false)",
    )
    parser.add_argument(
        "--poll",
        action="store_true",
        help="watch the repository and serve new versions as they are exported (model control "
        "mode poll; default: none, the served models never change)",
    )
    parser.add_argument(
        "--poll-interval",
        type=int,
        default=5,
        metavar="SECONDS",
        help="seconds between polls (default: 5)",
    )
    parser.add_argument(
        "--allow-shared-memory",
        action="store_true",
        help="let clients register system/CUDA shared-memory regions (locked by default; needs "
        "the token when one is set)",
    )
    parser.add_argument(
        "--s3-endpoint-url",
        metavar="URL",
        help="endpoint of an S3-compatible store for an s3:// repository, e.g. "
        "http://127.0.0.1:9000; credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY",
    )
    parser.add_argument(
        "--model-config-name",
        metavar="NAME",
        help="serve <model>/configs/NAME.pbtxt (default: embedded, or gpu in container mode)",
    )
    parser.add_argument(
        "--auto-complete-config",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="let Triton fill in missing model-config fields (default: off in embedded mode, "
        "where exported configs are complete and start-up is faster; on in container mode)",
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        metavar="DIR",
        help="folder for tritonserver's log and launch files. A missing folder is created "
        "0700; an existing one must be yours and not writable by group or others, else serve "
        "refuses it (the python backend runs code from it). Launch files go into a new "
        "launch-* folder inside, removed at exit (default: a new private folder in the system "
        "temp dir, made by mkdtemp, kept after exit for the log)",
    )
    parser.add_argument(
        "--startup-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="how long to wait for the server and every model to be ready (default: 300)",
    )
    parser.add_argument(
        "--exit-timeout",
        type=int,
        default=30,
        metavar="SECONDS",
        help="on stop, how long in-flight requests may take to finish (default: 30)",
    )
    container = parser.add_argument_group("container mode")
    container.add_argument(
        "--run", action="store_true", help="run the docker command instead of printing it"
    )
    container.add_argument(
        "--image", default=None, help="Triton image (default: the 2.51 image, 24.10-py3)"
    )
    container.add_argument("--gpus", default="all", help="docker --gpus value (default: all)")
    container.add_argument(
        "--compose-file",
        type=Path,
        default=Path("compose.yaml"),
        metavar="PATH",
        help="where to write the compose file (default: ./compose.yaml; a file not written by "
        "detstack is never overwritten)",
    )
    parser.set_defaults(handler=_handle_serve)


def _build_config(args: argparse.Namespace):
    from serve import DEFAULT_IMAGE, ServeConfig, load_token

    return ServeConfig(
        repository=args.repository,
        mode=args.mode,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        metrics=not args.no_metrics,
        metrics_host=args.metrics_address,
        token=load_token(args.token, args.token_file),
        poll=args.poll,
        poll_interval_s=args.poll_interval,
        allow_shared_memory=args.allow_shared_memory,
        s3_endpoint_url=args.s3_endpoint_url,
        model_config_name=args.model_config_name,
        run_dir=args.run_dir,
        startup_timeout_s=args.startup_timeout,
        exit_timeout_s=args.exit_timeout,
        image=args.image or DEFAULT_IMAGE,
        gpus=args.gpus,
        auto_complete_config=args.auto_complete_config,
    )


def _handle_serve(args: argparse.Namespace) -> int:
    config = _build_config(args)
    if config.host not in _LOOPBACK and config.token is None:
        logger.warning(
            "serving on %s without an API token: anyone who can reach this host can call every "
            "API; set %s or --token-file",
            config.host,
            TOKEN_ENV,
        )
    if config.metrics and config.metrics_host not in (None, *_LOOPBACK):
        logger.warning(
            "metrics on %s answer without the token (model names, versions, request counts); "
            "leave --metrics-address out to keep them on loopback, or use --no-metrics",
            config.metrics_host,
        )
    if config.mode == "container":
        return _serve_container(config, args.run, args.compose_file)
    return _serve_embedded(config)


def _token_lines(config) -> list[str]:
    if config.token is None:
        return [
            f"  token    none: no token needed (set {TOKEN_ENV} or --token-file to require one)"
        ]
    return [
        "  token    required on every API except health:",
        f"             HTTP  'Authorization: {TOKEN_SCHEME} <token>'",
        f"             gRPC  '{GRPC_TOKEN_HEADER}: {TOKEN_SCHEME} <token>'",
    ]


def _metrics_line(config, url: str | None) -> str:
    if url is None:
        return "off (--no-metrics)"
    if config.metrics_address in _LOOPBACK:
        return f"{url} (loopback only, no token; --metrics-address to change)"
    return f"{url} (no token: anyone who reaches {config.metrics_address} can read them)"


def _mode_line(config) -> str:
    if config.poll:
        return f"poll every {config.poll_interval_s}s (new versions are served)"
    return "none (the served models never change)"


def _serve_embedded(config) -> int:
    from serve import TritonServer
    from serve._run_dir import new_run_dir

    if config.run_dir is None:  # a new private folder (mkdtemp), kept after exit for its log
        config = dataclasses.replace(config, run_dir=new_run_dir())
    server = TritonServer(config)
    server.start()
    stop = threading.Event()
    received: list[int] = []

    def _on_signal(signum, _frame) -> None:
        received.append(signum)
        if len(received) > 1:  # a second Ctrl-C: do not wait any longer
            server.kill()
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        endpoints = server.endpoints
        models = ", ".join(
            f"{name} (version{'s' if len(v) > 1 else ''} {', '.join(map(str, v))})"
            for name, v in server.models.items()
        )
        lines = [
            f"Triton is ready (embedded, CPU) on {config.repository}",
            f"  models   {models}",
            f"  HTTP     {endpoints.http_url}",
            f"  gRPC     {endpoints.grpc}",
            f"  metrics  {_metrics_line(config, endpoints.metrics_url)}",
            f"  health   {endpoints.http_url}/v2/health/ready (open, no token)",
            *_token_lines(config),
            f"  mode     {_mode_line(config)}",
            f"  log      {server.log_path}",
            "Press Ctrl-C (or send SIGTERM) to stop.",
        ]
        print("\n".join(lines), flush=True)
        while not stop.wait(0.5):
            if not server.is_alive():
                raise ServeError(f"tritonserver stopped unexpectedly: {server.failure_reason()}")
        name = signal.Signals(received[0]).name if received else "signal"
        print(
            f"{name} received: stopping, letting in-flight requests finish (up to "
            f"{config.exit_timeout_s}s)...",
            flush=True,
        )
        returncode = server.stop()
        if len(received) > 1:
            print(
                "stopped at once (second signal): in-flight requests were cut off", file=sys.stderr
            )
            return 130
        if not server.clean_stop:
            raise ServeError(
                f"tritonserver exited with status {returncode} and may have cut requests off; "
                f"log: {server.log_path}"
            )
        print("Triton stopped.", flush=True)
        return 0
    finally:
        if server.is_alive():
            server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _serve_container(config, run: bool, compose_file: Path) -> int:
    from serve._container import container_command, container_command_line, write_compose_file

    command_line = container_command_line(config)
    compose = write_compose_file(config, compose_file)
    token_hint = (
        f"# the token is read from ${TOKEN_ENV} in your shell (export it first)\n"
        if config.token is not None
        else ""
    )
    print(
        f"# Serve {config.repository} with NVIDIA's Triton image on GPU "
        f"({config.config_name} flavour):\n"
        f"{token_hint}{command_line}\n"
        f"# The same as a compose file: {compose} (docker compose -f {compose} up)",
        flush=True,
    )
    if not run:
        return 0
    docker = shutil.which("docker")
    if docker is None:
        raise ServeError(
            "docker is not installed or not on PATH; run the command above on a machine with "
            "docker and the NVIDIA Container Toolkit, or serve here with --mode embedded"
        )
    env = dict(os.environ)
    if config.token is not None:
        env[TOKEN_ENV] = config.token.value
    command = container_command(config)
    command[0] = docker
    try:
        return subprocess.run(command, env=env, check=False).returncode
    except KeyboardInterrupt:  # docker forwards the signal to the container and exits after it
        print("interrupted: the container is stopping", file=sys.stderr)
        return 130
