"""The tritonserver command line for a :class:`~serve.ServeConfig`, shared by both worlds.

Secure defaults, each a Triton option:

* ``--model-control-mode=none`` (``poll`` with ``--repository-poll-secs`` when asked): clients
  cannot load or unload models through the repository API.
* ``--strict-readiness=true``: ``/v2/health/ready`` is true only when every model is ready,
  so a load balancer never routes to a half-loaded server.
* ``--exit-on-error=true``: a model that fails to load stops the server at start, with the
  reason in the log, instead of a server that silently serves less.
* Restricted APIs. Triton 2.51 has no switch to turn client shared memory off, so we restrict
  the ``shared-memory`` API (and, without a token, the ``trace`` and ``logging`` admin APIs)
  to a header value drawn at random for each start and never shown: nobody can call them.
  With a token, every API except ``health`` needs ``Authorization: Bearer <token>``.
* Metrics on loopback (``--metrics-address=127.0.0.1``) whatever ``--host`` is, or off
  (``--allow-metrics=false``): Triton cannot put a token on its metrics endpoint, which names
  the models, their versions and request counts.

Triton takes the token only on its command line (it has no option file and reads no variable
for it), so it is visible in the tritonserver process's ``/proc/<pid>/cmdline`` to local users
who can read it. We never log it: :func:`redact_arguments` masks it in every message.

Example:
    >>> groups = restriction_groups(None, allow_shared_memory=False, lock_value="x")
    >>> [(apis, key) for apis, key, _ in groups]
    [(('shared-memory', 'trace', 'logging'), 'detstack-api-disabled')]
"""

from __future__ import annotations

import re
import shlex

from serve._config import ServeConfig
from serve._token import HTTP_TOKEN_HEADER, ApiToken

__all__ = [
    "LOCK_HEADER",
    "LOCK_PLACEHOLDER",
    "PROTECTED_APIS",
    "RANDOM_LOCK_SHELL",
    "TOKEN_PLACEHOLDER",
    "placeholder_token",
    "redact",
    "redact_arguments",
    "restriction_groups",
    "server_arguments",
    "shell_words",
]

#: APIs that need the token (every one Triton 2.51 knows except health and shared-memory).
PROTECTED_APIS = (
    "inference",
    "metadata",
    "model-config",
    "model-repository",
    "statistics",
    "trace",
    "logging",
)
SHARED_MEMORY_API = "shared-memory"
#: Header name of the lock on disabled APIs; Triton's refusal names it, which explains itself.
LOCK_HEADER = "detstack-api-disabled"
_ADMIN_APIS = ("trace", "logging")
#: POSIX shell that prints 24 random bytes in hex: the lock, drawn where the server starts.
RANDOM_LOCK_SHELL = "od -An -N24 -tx1 /dev/urandom | tr -d ' \\n'"
#: Stand-ins for the token and the lock in the arguments of a script (container, pod): the
#: script names variables in their place (:func:`shell_words`), and never holds a real value.
TOKEN_PLACEHOLDER = "@@DETSTACK-TOKEN@@"  # noqa: S105 - not a secret
LOCK_PLACEHOLDER = "@@DETSTACK-LOCK@@"
# The characters a POSIX shell still interprets inside double quotes.
_DOUBLE_QUOTED_SPECIAL = re.compile(r'([\\"$`])')

RestrictionGroup = tuple[tuple[str, ...], str, str]


def restriction_groups(
    token: ApiToken | None, allow_shared_memory: bool, lock_value: str
) -> list[RestrictionGroup]:
    """The ``(apis, header key, header value)`` groups to restrict (an API is in one group only)."""
    groups: list[RestrictionGroup] = []
    locked: list[str] = [] if allow_shared_memory else [SHARED_MEMORY_API]
    if token is not None:
        apis = [*PROTECTED_APIS, *([SHARED_MEMORY_API] if allow_shared_memory else [])]
        groups.append((tuple(apis), HTTP_TOKEN_HEADER, token.header_value))
    else:
        locked.extend(_ADMIN_APIS)
    if locked:
        groups.append((tuple(locked), LOCK_HEADER, lock_value))
    return groups


def placeholder_token() -> ApiToken:
    """A token whose value is :data:`TOKEN_PLACEHOLDER`: it builds a script's arguments."""
    return ApiToken(TOKEN_PLACEHOLDER, source="a script's placeholder")


def restriction_arguments(groups: list[RestrictionGroup]) -> list[str]:
    """``--http-restricted-api`` and ``--grpc-restricted-protocol`` options for ``groups``.

    Triton's format is ``<api>,<api>:<key>=<value>``; on gRPC it prefixes the key with
    ``triton-grpc-protocol-`` itself.
    """
    arguments = []
    for apis, key, value in groups:
        spec = f"{','.join(apis)}:{key}={value}"
        arguments += [f"--http-restricted-api={spec}", f"--grpc-restricted-protocol={spec}"]
    return arguments


def server_arguments(
    config: ServeConfig,
    *,
    repository: str,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    lock_value: str,
    host: str | None = None,
    metrics_host: str | None = None,
) -> list[str]:
    """Every tritonserver option for ``config`` (without the binary and world-specific options).

    ``host`` and ``metrics_host`` override where the endpoints bind (the container world binds
    inside the container); by default ``config.host`` and ``config.metrics_address``.
    """
    bind = config.host if host is None else host
    arguments = [
        f"--model-repository={repository}",
        f"--model-config-name={config.config_name}",
        f"--model-control-mode={'poll' if config.poll else 'none'}",
    ]
    if config.poll:
        arguments.append(f"--repository-poll-secs={config.poll_interval_s}")
    if not config.auto_complete:
        # The served config is exactly the file, and no extra python stub is started for it.
        arguments.append("--disable-auto-complete-config")
    arguments += [
        "--strict-readiness=true",
        "--exit-on-error=true",
        f"--exit-timeout-secs={config.exit_timeout_s}",
        f"--http-address={bind}",
        f"--http-port={http_port}",
        f"--grpc-address={bind}",
        f"--grpc-port={grpc_port}",
    ]
    if config.metrics:
        metrics_bind = config.metrics_address if metrics_host is None else metrics_host
        arguments += [f"--metrics-address={metrics_bind}", f"--metrics-port={metrics_port}"]
    else:
        arguments.append("--allow-metrics=false")
    groups = restriction_groups(config.token, config.allow_shared_memory, lock_value)
    arguments += restriction_arguments(groups)
    return arguments


def redact(text: str, secrets: list[str]) -> str:
    """``text`` with every (non-empty) secret replaced by ``<redacted>``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<redacted>")
    return text


def redact_arguments(arguments: list[str], secrets: list[str]) -> list[str]:
    """``arguments`` with every secret replaced by ``<redacted>`` (for logs and messages)."""
    return [redact(argument, secrets) for argument in arguments]


def shell_words(arguments: list[str], expansions: dict[str, str]) -> list[str]:
    """``arguments`` as POSIX shell words, each placeholder in ``expansions`` made a variable.

    The scripts that start tritonserver in a container or a pod hold no secret: a token or lock
    enters the arguments as a placeholder, and here becomes a variable reference (``${token}``).
    Such an argument is double-quoted, with the rest of it escaped, so the shell expands the
    variable once and never re-parses its value; every other argument is quoted by
    :func:`shlex.quote`.
    """
    words = []
    for argument in arguments:
        if any(placeholder in argument for placeholder in expansions):
            expanded = _DOUBLE_QUOTED_SPECIAL.sub(r"\\\1", argument)
            for placeholder, expansion in expansions.items():
                expanded = expanded.replace(placeholder, expansion)
            words.append(f'"{expanded}"')
        else:
            words.append(shlex.quote(argument))
    return words
