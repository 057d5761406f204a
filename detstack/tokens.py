"""Where an API token comes from: ``--token``, else ``--token-file``, else the environment.

Every command that talks to or starts a secured Triton (serve, predict, bench, pipeline) finds
the token the same way. Passing it through the environment or a file keeps it out of the
process's command line, which other local users can read. What a token must look like is the
server's policy (:class:`serve.ApiToken`), not this module's.

Example:
    >>> read_token(None, None, {"DETSTACK_API_TOKEN": "abc"})
    ('abc', '$DETSTACK_API_TOKEN')
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from detstack.errors import ConfigError

__all__ = ["TOKEN_ENV", "read_token"]

#: Environment variable read when no ``--token`` / ``--token-file`` is given.
TOKEN_ENV = "DETSTACK_API_TOKEN"  # noqa: S105 - a variable name


def read_token(
    value: str | None = None,
    file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[str, str] | None:
    """Find the token and say where it came from, without judging it.

    A token file holds the token on its first line; one trailing newline (``\\n`` or
    ``\\r\\n``) is dropped, so ``echo $TOKEN > file`` works.

    Returns:
        ``(token, source)`` with ``source`` naming the flag, file or variable, or ``None`` when
        no token is configured anywhere.

    Raises:
        ConfigError: both ``value`` and ``file`` are given, or the file cannot be read (the
            message never contains the token).
    """
    if value is not None and file is not None:
        raise ConfigError("give the API token with --token or --token-file, not both")
    if value is not None:
        return value, "--token"
    if file is not None:
        try:
            text = Path(file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(
                f"cannot read the API token file {file}: {error.__class__.__name__}"
            ) from None
        token = text[:-1] if text.endswith("\n") else text
        token = token[:-1] if token.endswith("\r") else token
        return token, f"--token-file {file}"
    from_env = (os.environ if environ is None else environ).get(TOKEN_ENV)
    if from_env:
        return from_env, f"${TOKEN_ENV}"
    return None
