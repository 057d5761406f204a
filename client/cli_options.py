"""The connection options every command that calls a served model shares.

``detstack predict``, ``detstack score`` and ``detstack bench`` all name a model, may need an API
token, and bound each request; one definition keeps their flags and help texts the same.

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> add_connection_options(parser)
    >>> token_from_args(parser.parse_args(["--token", "abc"]))
    'abc'
"""

from __future__ import annotations

import argparse
from pathlib import Path

from detstack.contract import DEFAULT_MODEL_NAME
from detstack.tokens import TOKEN_ENV, read_token

__all__ = ["add_connection_options", "add_server_options", "server_urls", "token_from_args"]

#: Where a command looks for Triton when no ``--url`` is given, per transport.
DEFAULT_URLS = {"grpc": "localhost:8001", "http": "localhost:8000"}


def token_from_args(args: argparse.Namespace) -> str | None:
    """The API token from ``--token``, ``--token-file`` or the environment (None: no token)."""
    found = read_token(args.token, args.token_file)
    return None if found is None else found[0]


def add_server_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Add ``--url`` (repeatable: several servers of one repository) and ``--protocol``."""
    parser.add_argument(
        "--url",
        action="append",
        default=None,
        metavar="HOST:PORT",
        help="a Triton server; repeat for several servers of one repository (requests spread "
        f"over the healthy ones and fail over; default: {DEFAULT_URLS['grpc']}, or "
        f"{DEFAULT_URLS['http']} with --protocol http)",
    )
    parser.add_argument(
        "--protocol",
        choices=tuple(DEFAULT_URLS),
        default="grpc",
        help="transport (default: grpc)",
    )


def server_urls(args: argparse.Namespace) -> tuple[str, ...]:
    """The ``--url`` values, or the default address of ``--protocol``."""
    return tuple(args.url or (DEFAULT_URLS[args.protocol],))


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--model``, ``--token``, ``--token-file`` and ``--timeout`` to ``parser``."""
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL_NAME,
        help=f"name of the served model (default: {DEFAULT_MODEL_NAME})",
    )
    token = parser.add_argument_group("API token (when the server was started with one)")
    token.add_argument(
        "--token",
        default=None,
        help=f"the API token; prefer --token-file or ${TOKEN_ENV}, which other users cannot "
        "read in the process list",
    )
    token.add_argument("--token-file", type=Path, default=None, help="file holding the token")
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="deadline of each request in seconds (default: 60)",
    )
