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
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from detstack.errors import RepositoryError, ServeError
from serve._config import ServeConfig
from serve._launch import find_tritonserver, prepare_launch
from serve._repository import check_local_repository, triton_s3_url
from serve._run_dir import new_launch_dir, new_run_dir, open_log, private_run_dir
from serve._token import token_headers
from serve._triton_args import redact_arguments, server_arguments

__all__ = ["Endpoints", "TritonServer", "find_free_ports"]

logger = logging.getLogger(__name__)

LOG_NAME = "tritonserver.log"
_PORT_FLAGS = {"http": "--http-port", "grpc": "--grpc-port", "metrics": "--metrics-port"}
_POLL_S = 0.1
_PR_SET_PDEATHSIG = 1


def _connect_address(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


@dataclass(frozen=True)
class Endpoints:
    """Where a running server listens, and the addresses to connect to it.

    ``metrics_host`` is where metrics bind (loopback by default, whatever ``host`` is; ``None``
    here means the same as ``host``); ``metrics_port`` is 0 when metrics are off.
    """

    host: str
    http_port: int
    grpc_port: int
    metrics_port: int
    metrics_host: str | None = None

    @property
    def connect_host(self) -> str:
        """The address a local client uses (a wildcard bind is reached through loopback)."""
        return _connect_address(self.host)

    @property
    def http(self) -> str:
        """``host:port`` of the HTTP endpoint, as ``tritonclient.http`` takes it."""
        return f"{self.connect_host}:{self.http_port}"

    @property
    def grpc(self) -> str:
        """``host:port`` of the gRPC endpoint, as ``tritonclient.grpc`` takes it."""
        return f"{self.connect_host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.http}"

    @property
    def metrics_url(self) -> str | None:
        """Prometheus metrics (no token: loopback unless asked), ``None`` when they are off."""
        if self.metrics_port == 0:
            return None
        host = self.host if self.metrics_host is None else self.metrics_host
        return f"http://{_connect_address(host)}:{self.metrics_port}/metrics"


def find_free_ports(host: str, count: int) -> list[int]:
    """``count`` distinct ports free on ``host`` right now (bound together, then released)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(
                socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM
            )
            sockets.append(sock)
            sock.bind((host if host not in ("", "0.0.0.0") else "0.0.0.0", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _port_in_use(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


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
        if config.is_s3:
            repository = triton_s3_url(config.repository, config.s3_endpoint_url)
        else:
            root = Path(config.repository).expanduser().resolve()
            check_local_repository(root, config.config_name)
            repository = str(root)
        self._make_run_dir()
        assert self.run_dir is not None
        self._launch_dir = new_launch_dir(self.run_dir)
        try:
            backends, env = prepare_launch(installation, self._launch_dir)
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
            except _PortTakenError as taken:
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
        if "Exit timeout expired" not in log:
            return False
        in_flight = re.findall(r"Found (\d+) model versions that have in-flight inferences", log)
        if in_flight and in_flight[-1] == "0":
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
        if self._process is not None:
            self._kill_group()
            self._process.wait()
            self._process = None
        self._remove_launch_dir()

    def failure_reason(self) -> str:
        """Triton's reason for failing, read from this run's part of its log."""
        return _failure_reason(self._read_log(), self.log_path, self._secrets())

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
        return tuple(name for name in _PORT_FLAGS if name != "metrics" or self.config.metrics)

    def _bind_host(self, name: str) -> str:
        return self.config.metrics_address if name == "metrics" else self.config.host

    def _choose_ports(self) -> dict[str, int]:
        config = self.config
        wanted = {name: getattr(config, f"{name}_port") for name in self._port_names()}
        free = iter(find_free_ports(config.host, sum(1 for p in wanted.values() if p == 0)))
        ports = {name: (port if port != 0 else next(free)) for name, port in wanted.items()}
        for name, port in ports.items():
            host = self._bind_host(name)
            if wanted[name] != 0 and _port_in_use(host, port):
                raise ServeError(_PortTakenError(name, port, host).message())
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
        if self.log_path is None or not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as log:
            log.seek(self._log_offset)
            return log.read().decode("utf-8", errors="replace")

    def _http(
        self, method: str, path: str, body: bytes | None = None, timeout: float = 2.0
    ) -> tuple[int, bytes]:
        assert self.endpoints is not None
        request = urllib.request.Request(  # noqa: S310 - always our own http:// endpoint
            self.endpoints.http_url + path,
            data=body,
            method=method,
            headers=self.request_headers("http"),
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - our URL
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.config.startup_timeout_s
        while True:
            returncode = self._process.poll()
            if returncode is not None:
                taken = _port_taken(self._read_log(), self.endpoints, self.config.host)
                if taken is not None:
                    raise taken
                raise ServeError(
                    f"tritonserver exited with status {returncode} before it was ready "
                    f"(repository {self.config.repository}): " + self.failure_reason()
                )
            with contextlib.suppress(OSError):
                status, _ = self._http("GET", "/v2/health/ready", timeout=1.0)
                if status == 200:
                    self._check_services()
                    if self._metrics_up():
                        return
            if time.monotonic() > deadline:
                states = self._model_states()
                raise ServeError(
                    f"tritonserver was not ready after {self.config.startup_timeout_s:g}s "
                    f"(models: {states or 'unknown'}); log: {self.log_path}"
                )
            time.sleep(_POLL_S)

    def _metrics_up(self) -> bool:
        assert self.endpoints is not None
        url = self.endpoints.metrics_url
        if url is None:  # metrics are off
            return True
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:  # noqa: S310
                return response.status == 200
        except OSError:
            return False

    def _check_services(self) -> None:
        """Triton goes on without a service it could not start (metrics): we do not."""
        log = self._read_log()
        failed = re.search(r"failed to start (\w+) service: (.*?)\"?$", log, re.M)
        if failed is None:
            return
        taken = _port_taken(log, self.endpoints, self.config.host)
        if taken is not None:
            raise taken
        raise ServeError(f"tritonserver could not start its {failed[1]} service: {failed[2]}")

    def _repository_index(self) -> list[dict]:
        status, body = self._http("POST", "/v2/repository/index", body=b"{}")
        if status != 200:
            raise ServeError(f"cannot list the served models (HTTP {status}); log: {self.log_path}")
        return json.loads(body or b"[]")

    def _model_states(self) -> str:
        with contextlib.suppress(OSError, ServeError, ValueError):
            entries = self._repository_index()
            return ", ".join(
                f"{e.get('name')} v{e.get('version', '?')} {e.get('state', '?')}"
                + (f" ({e['reason']})" if e.get("reason") else "")
                for e in entries
            )
        return ""

    def _check_models(self) -> None:
        entries = self._repository_index()
        models: dict[str, list[int]] = {}
        for entry in entries:
            if entry.get("state") == "READY":
                models.setdefault(entry["name"], []).append(int(entry.get("version", 0)))
        if not models:
            where = self.config.repository
            self.stop()
            raise RepositoryError(
                f"model repository {where} holds no model Triton could serve; expected "
                "<repository>/<model name>/config.pbtxt and <model name>/<version>/ "
                "(detstack export)"
            )
        self.models = {name: tuple(sorted(versions)) for name, versions in sorted(models.items())}

    def refresh_models(self) -> dict[str, tuple[int, ...]]:
        """Read the models and versions ready now (they change in poll mode)."""
        models: dict[str, list[int]] = {}
        for entry in self._repository_index():
            if entry.get("state") == "READY":
                models.setdefault(entry["name"], []).append(int(entry.get("version", 0)))
        self.models = {name: tuple(sorted(v)) for name, v in sorted(models.items())}
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


# ---------------------------------------------------------------------- log reading


class _PortTakenError(Exception):
    def __init__(self, name: str, port: int, host: str) -> None:
        super().__init__(name, port)
        self.name, self.port, self.host = name, port, host

    def message(self) -> str:
        return (
            f"{self.name.upper() if self.name != 'metrics' else 'metrics'} port {self.port} "
            f"({_PORT_FLAGS[self.name]}) is already in use on {self.host}; choose another with "
            f"{_PORT_FLAGS[self.name]} PORT (0 = any free port) or stop the process using it"
        )


def _port_taken(log: str, endpoints: Endpoints | None, host: str) -> _PortTakenError | None:
    """Which of our ports Triton could not bind, from its log."""
    if endpoints is None or not re.search(
        r"already in use|Address already in use|Unable to configure socket", log
    ):
        return None
    for name in ("http", "grpc", "metrics"):
        port = getattr(endpoints, f"{name}_port")
        if port == 0:  # metrics off
            continue
        if name == "metrics" and endpoints.metrics_host is not None:
            host = endpoints.metrics_host
        if re.search(
            rf"[:'\s]{port}\b[^\n]*(already in use|Address already in use)", log
        ) or re.search(rf"(already in use|Address already in use)[^\n]*[:'\s]{port}\b", log):
            return _PortTakenError(name, port, host)
    return None


_LOAD_FAILURE = re.compile(
    r"failed to load '(?P<model>[^']+)' version (?P<version>\d+): (?P<reason>.*?)\"?$", re.M
)
_POLL_FAILURE = re.compile(
    r"(failed to poll model repository.*|failed to stat.*|Could not get MetaData.*)$", re.M
)
_ERROR_LINE = re.compile(r"^(?:error: |E\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] )(?P<message>.+)$", re.M)


def _clean(text: str, secrets_: list[str]) -> str:
    text = text.replace("\\n", "\n").replace('\\"', '"').strip().strip('"')
    text = text.split("\n\nAt:")[0].strip()  # keep the error, not the Python traceback
    for secret in secrets_:
        if secret:
            text = text.replace(secret, "<redacted>")
    return text


def _failure_reason(log: str, log_path: Path | None, secrets_: list[str]) -> str:
    where = f" (full log: {log_path})" if log_path else ""
    failures = [
        f"model '{m['model']}' version {m['version']} failed to load: "
        + _clean(m["reason"], secrets_)
        for m in _LOAD_FAILURE.finditer(log)
    ]
    if failures:
        return "; ".join(dict.fromkeys(failures)) + where
    polls = [_clean(m.group(1), secrets_) for m in _POLL_FAILURE.finditer(log)]
    if polls:
        return polls[-1] + where
    errors = [_clean(m["message"], secrets_) for m in _ERROR_LINE.finditer(log)]
    if errors:
        return errors[-1] + where
    tail = "\n".join(line for line in log.strip().splitlines()[-5:])
    return (_clean(tail, secrets_) or "no message in its log") + where
