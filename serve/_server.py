"""``TritonServer``: runs the embedded tritonserver on a model repository, as a context manager.

It starts the binary of nvidia-pytriton with the embedded (python backend, CPU) flavour of every
model, waits until the server *and every model* are ready, and exposes the endpoints. While it
waits it watches the process: if Triton dies (a model that fails to load, a port in use), the
:class:`~detstack.errors.ServeError` carries Triton's own reason from its log. Stopping sends
SIGINT, on which Triton refuses new requests, lets the in-flight ones finish (up to
``exit_timeout_s``) and exits.

Triton writes its log (stdout and stderr) to ``<run dir>/tritonserver.log``, never to ours. The
run dir is private (see :mod:`serve._run_dir`): a new ``mkdtemp`` folder, or a ``--run-dir`` of
the user's that no one else can write; the launch files go into a new ``launch-*`` folder in it.

Example:
    >>> config = ServeConfig("model_repository", http_port=0, grpc_port=0, metrics_port=0)
    >>> with TritonServer(config) as server:                      # doctest: +SKIP
    ...     client = tritonclient.http.InferenceServerClient(server.endpoints.http)
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

from detstack.errors import RepositoryError, ServeError
from serve._config import ServeConfig
from serve._endpoints import PORT_FLAGS, Endpoints, find_free_ports, port_in_use
from serve._launch import find_tritonserver, prepare_launch
from serve._probe import describe_states, is_ready, metrics_up, ready_models, repository_index
from serve._repository import EMBEDDED_BACKENDS, flavour_view, served_repository
from serve._run_dir import new_launch_dir, new_run_dir, open_log, private_run_dir
from serve._token import token_headers
from serve._triton_args import redact_arguments, server_arguments
from serve._triton_log import (
    PortTakenError,
    exit_timeout_expired,
    failed_service,
    failure_reason,
    idle_at_exit_timeout,
    port_taken,
    read_log,
)

__all__ = ["Endpoints", "TritonServer", "find_free_ports"]

logger = logging.getLogger(__name__)

LOG_NAME = "tritonserver.log"
_POLL_S = 0.1
_PR_SET_PDEATHSIG = 1


def _load_libc_prctl():
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except OSError:  # not glibc Linux: the server is still stopped by stop() / atexit
        return None


class TritonServer:
    """The embedded tritonserver serving one repository; start with ``with`` or :meth:`start`.

    Attributes (after start):
        endpoints: the :class:`Endpoints` the server listens on.
        models: ``{model name: (versions...)}`` ready to serve.
        log_path: Triton's log file.
        run_dir: folder of the log and of this start's ``launch-*`` folder.
    """

    def __init__(self, config: ServeConfig) -> None:
        if config.mode != "embedded":
            raise ServeError(
                f"TritonServer runs the embedded server; mode {config.mode!r} is served by docker "
                "(see serve.container_command)"
            )
        self.config = config
        self.endpoints: Endpoints | None = None
        self.models: dict[str, tuple[int, ...]] = {}
        self.run_dir: Path | None = None
        self.log_path: Path | None = None
        self._process: subprocess.Popen | None = None
        self._owns_run_dir = False
        self._launch_dir: Path | None = None
        self._lock_value = ""
        self._log_offset = 0
        #: After :meth:`stop`: whether every request finished (see :meth:`stop`).
        self.clean_stop = False

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> TritonServer:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def is_alive(self) -> bool:
        """Whether the tritonserver process is still running."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> TritonServer:
        """Start the server and wait until it and every model are ready.

        Raises:
            ServeError: the binary is missing, a port is in use, the server died (with Triton's
                reason) or was not ready within ``startup_timeout_s``.
            RepositoryError: the repository is missing, empty or invalid.
        """
        if self._process is not None:
            raise ServeError("this TritonServer is already started; create a new one")
        config = self.config
        installation = find_tritonserver()
        repository, root = served_repository(config, EMBEDDED_BACKENDS)
        self._make_run_dir()
        assert self.run_dir is not None
        self._launch_dir = new_launch_dir(self.run_dir)
        try:
            backends, env = prepare_launch(installation, self._launch_dir)
            # Without the GPU-only parts of a --gpu-decode model (S3: Triton lists the bucket).
            view = flavour_view(root, config.config_name, self._launch_dir) if root else None
            repository = str(view) if view is not None else repository
        except BaseException:
            self._remove_launch_dir()
            raise
        self.log_path = self.run_dir / LOG_NAME

        auto_ports = [name for name in self._port_names() if getattr(config, f"{name}_port") == 0]
        attempts = 3 if auto_ports else 1
        for attempt in range(1, attempts + 1):
            ports = self._choose_ports()
            try:
                self._launch(installation.binary, backends, env, repository, ports)
                self._wait_ready()
                break
            except PortTakenError as taken:
                self._cleanup_process()
                if taken.name in auto_ports and attempt < attempts:
                    logger.info(
                        "port %d was taken before Triton bound it; retrying with new ports",
                        taken.port,
                    )
                    continue
                raise ServeError(taken.message()) from None
            except BaseException:
                self._cleanup_process()
                self._remove_launch_dir()
                raise
        self._check_models()
        return self

    def stop(self) -> int | None:
        """Stop gracefully: SIGINT, in-flight requests finish, then the process exits.

        On SIGINT Triton 2.51 closes its listening sockets (new connections are refused) and
        waits up to ``exit_timeout_s`` for open client connections to close and in-flight
        requests to finish; a connection a client keeps open is still served meanwhile. When
        the timeout expires with only idle connections left, Triton exits with status 1 although
        no request was lost: :attr:`clean_stop` tells the two cases apart.

        Returns:
            tritonserver's exit status, or ``None`` if it was not running.
        """
        process = self._process
        if process is None:
            return None
        returncode = process.poll()
        signalled = returncode is None
        if signalled:
            logger.info(
                "stopping tritonserver (pid %d), waiting up to %ds for in-flight requests",
                process.pid,
                self.config.exit_timeout_s,
            )
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)
            try:
                returncode = process.wait(self.config.exit_timeout_s + 15)
            except subprocess.TimeoutExpired:
                logger.warning("tritonserver did not exit in time; killing it")
                self._kill_group()
                returncode = process.wait()
        self._kill_group()  # python-backend stubs left behind, if any
        self._process = None
        self.clean_stop = signalled and self._stopped_without_losing_requests(returncode)
        logger.info("tritonserver exited with status %s", returncode)
        self._remove_launch_dir()
        if self._owns_run_dir and self.clean_stop and self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        return returncode

    def _stopped_without_losing_requests(self, returncode: int) -> bool:
        if returncode == 0:
            return True
        log = self._read_log()
        if not exit_timeout_expired(log):
            return False
        if idle_at_exit_timeout(log):
            logger.warning(
                "clients kept connections open until the exit timeout (%ds); every request had "
                "finished, and Triton closed the connections",
                self.config.exit_timeout_s,
            )
            return True
        logger.error(
            "the exit timeout (%ds) expired with requests still running; they were cut off",
            self.config.exit_timeout_s,
        )
        return False

    def kill(self) -> None:
        """Stop at once, without waiting for in-flight requests."""
        self._cleanup_process()
        self._remove_launch_dir()

    def failure_reason(self) -> str:
        """Triton's reason for failing, read from this run's part of its log."""
        return failure_reason(self._read_log(), self.log_path, self._secrets())

    def request_headers(self, protocol: str = "http") -> dict[str, str]:
        """Headers that carry this server's token on ``protocol`` (``{}`` without a token)."""
        return token_headers(self.config.token, protocol)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ internals

    def _secrets(self) -> list[str]:
        values = [self._lock_value]
        if self.config.token is not None:
            values.append(self.config.token.value)
        return values

    def _make_run_dir(self) -> None:
        if self.config.run_dir is not None:
            self.run_dir = private_run_dir(Path(self.config.run_dir))
        else:
            self.run_dir = new_run_dir()
            self._owns_run_dir = True

    def _remove_launch_dir(self) -> None:
        """The launch files are only links and a tiny venv: never kept, never reused."""
        if self._launch_dir is not None:
            shutil.rmtree(self._launch_dir, ignore_errors=True)
            self._launch_dir = None

    def _port_names(self) -> tuple[str, ...]:
        return tuple(name for name in PORT_FLAGS if name != "metrics" or self.config.metrics)

    def _bind_host(self, name: str) -> str:
        return self.config.metrics_address if name == "metrics" else self.config.host

    def _choose_ports(self) -> dict[str, int]:
        config = self.config
        wanted = {name: getattr(config, f"{name}_port") for name in self._port_names()}
        free = iter(find_free_ports(config.host, sum(1 for p in wanted.values() if p == 0)))
        ports = {name: (port if port != 0 else next(free)) for name, port in wanted.items()}
        for name, port in ports.items():
            host = self._bind_host(name)
            if wanted[name] != 0 and port_in_use(host, port):
                raise ServeError(PortTakenError(name, port, host).message())
        ports.setdefault("metrics", 0)  # metrics off: no port
        return ports

    def _launch(
        self,
        binary: Path,
        backends: Path,
        env: dict[str, str],
        repository: str,
        ports: dict[str, int],
    ) -> None:
        config = self.config
        self._lock_value = secrets.token_urlsafe(32)
        arguments = server_arguments(
            config,
            repository=repository,
            http_port=ports["http"],
            grpc_port=ports["grpc"],
            metrics_port=ports["metrics"],
            lock_value=self._lock_value,
        )
        arguments += [
            f"--backend-directory={backends}",
            # Unique shared-memory names, so servers side by side never share a region.
            f"--backend-config=python,shm-region-prefix-name=detstack_{os.getpid()}_{secrets.token_hex(4)}_",
            "--id=detstack",
        ]
        command = [str(binary), *arguments]
        logger.debug("starting %s", " ".join(redact_arguments(command, self._secrets())))
        assert self.log_path is not None
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        prctl = _load_libc_prctl()

        def _die_with_parent() -> None:  # runs in the child between fork and exec
            if prctl is not None:
                prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

        with os.fdopen(open_log(self.log_path), "ab") as log:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.run_dir,
                start_new_session=True,  # our Ctrl-C is forwarded by stop(), not delivered twice
                preexec_fn=_die_with_parent,
            )
        self.endpoints = Endpoints(
            config.host,
            ports["http"],
            ports["grpc"],
            ports["metrics"],
            metrics_host=config.metrics_address if config.metrics else None,
        )
        logger.info("tritonserver started (pid %d), log: %s", self._process.pid, self.log_path)

    def _read_log(self) -> str:
        return read_log(self.log_path, self._log_offset)

    def _wait_ready(self) -> None:
        assert self._process is not None and self.endpoints is not None
        deadline = time.monotonic() + self.config.startup_timeout_s
        while True:
            returncode = self._process.poll()
            if returncode is not None:
                taken = port_taken(self._read_log(), self.endpoints, self.config.host)
                if taken is not None:
                    raise taken
                raise ServeError(
                    f"tritonserver exited with status {returncode} before it was ready "
                    f"(repository {self.config.repository}): " + self.failure_reason()
                )
            with contextlib.suppress(OSError):
                if is_ready(self.endpoints, self.request_headers("http")):
                    self._check_services()
                    if metrics_up(self.endpoints):
                        return
            if time.monotonic() > deadline:
                states = describe_states(self.endpoints, self.request_headers("http"))
                raise ServeError(
                    f"tritonserver was not ready after {self.config.startup_timeout_s:g}s "
                    f"(models: {states or 'unknown'}); log: {self.log_path}"
                )
            time.sleep(_POLL_S)

    def _check_services(self) -> None:
        """Triton goes on without a service it could not start (metrics): we do not."""
        log = self._read_log()
        failed = failed_service(log)
        if failed is None:
            return
        taken = port_taken(log, self.endpoints, self.config.host)
        if taken is not None:
            raise taken
        service, reason = failed
        raise ServeError(f"tritonserver could not start its {service} service: {reason}")

    def _ready_models(self) -> dict[str, tuple[int, ...]]:
        assert self.endpoints is not None
        entries = repository_index(self.endpoints, self.request_headers("http"), self.log_path)
        return ready_models(entries)

    def _check_models(self) -> None:
        models = self._ready_models()
        if not models:
            where = self.config.repository
            self.stop()
            raise RepositoryError(
                f"model repository {where} holds no model Triton could serve; expected "
                "<repository>/<model name>/config.pbtxt and <model name>/<version>/ "
                "(detstack export)"
            )
        self.models = models

    def refresh_models(self) -> dict[str, tuple[int, ...]]:
        """Read the models and versions ready now (they change in poll mode)."""
        self.models = self._ready_models()
        return self.models

    def _kill_group(self) -> None:
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._process.pid, signal.SIGKILL)

    def _cleanup_process(self) -> None:
        if self._process is not None:
            if self._process.poll() is None:
                self._kill_group()
            self._process.wait()
            self._kill_group()
            self._process = None
