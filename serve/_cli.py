"""Subcommands of the ``serve`` stage (registered by :mod:`detstack.cli`)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands to ``subparsers``."""
