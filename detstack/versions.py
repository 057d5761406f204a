"""Which versions of which libraries produced a result: one way to ask, for every stage.

An export's manifest and a benchmark's conditions both record the installed versions of the
libraries their figures depend on, so that a number can be traced to the code that made it.
The versions come from the installed distributions' metadata (``importlib.metadata``), not
from ``module.__version__``: asking needs no import (no torch start-up for a version string),
and a distribution that is not installed is simply left out rather than guessed.

Example:
    >>> library_versions(["numpy", "no-such-package"])                  # doctest: +SKIP
    {'numpy': '2.2.6'}
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterable

__all__ = ["library_versions"]


def library_versions(names: Iterable[str]) -> dict[str, str]:
    """The installed version of each distribution in ``names``, in that order.

    Args:
        names: distribution names as on PyPI (``"onnxruntime-gpu"``, ``"tritonclient"``).

    Returns:
        ``{name: version}`` for the distributions that are installed; the others are absent
        (an optional extra that is not installed is not an error).
    """
    versions: dict[str, str] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions
