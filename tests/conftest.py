"""Fixtures shared by every test module.

Each area's shared fixtures live in ``tests/fixtures/<area>.py`` and are loaded here as plugins,
so a Triton server, an S3 server or a tiny checkpoint is started or built once per session and
reused by every stage's tests.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

pytest_plugins = [
    "tests.fixtures.data",
    "tests.fixtures.s3",
    "tests.fixtures.models",
    "tests.fixtures.repository",
    "tests.fixtures.triton",
]


@pytest.fixture(autouse=True, scope="session")
def _session_cache_dir(tmp_path_factory: pytest.TempPathFactory):
    """Caches (image checks, weights) go to this test session's folder, never ~/.cache."""
    patch = pytest.MonkeyPatch()
    patch.setenv("DETSTACK_CACHE_DIR", str(tmp_path_factory.mktemp("detstack-cache")))
    yield
    patch.undo()


@pytest.fixture(autouse=True)
def _isolate_random_state():
    """Give every test the same seeds and restore the global RNG states afterwards."""
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    random.seed(0)
    np.random.seed(0)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        torch = None
    torch_state = torch.random.get_rng_state() if torch is not None else None
    if torch is not None:
        torch.manual_seed(0)
    yield
    random.setstate(python_state)
    np.random.set_state(numpy_state)
    if torch is not None:
        torch.random.set_rng_state(torch_state)
