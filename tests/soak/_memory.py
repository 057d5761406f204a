"""Resident memory of a process and of a process tree, sampled on a thread during a soak.

RSS is read from ``/proc/<pid>/status`` (``VmRSS``); a tree is a process and every descendant
(for Triton: ``tritonserver`` and its python-backend stubs, one per model instance), found
through each process's ``PPid``. A process that exits between two reads counts as 0.

Example:
    >>> with MemorySampler({"test": os.getpid()}, interval_s=0.25) as sampler:  # doctest: +SKIP
    ...     run_load()
    >>> sampler.peak_mb["test"]                                                # doctest: +SKIP
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

__all__ = ["MemorySampler", "descendants", "rss_bytes", "tree_rss_bytes"]

_PROC = Path("/proc")


def _status(pid: int) -> dict[str, str]:
    try:
        text = (_PROC / str(pid) / "status").read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return {}
    fields = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.strip()
    return fields


def rss_bytes(pid: int) -> int:
    """``VmRSS`` of ``pid`` in bytes (0 when it is gone or a zombie)."""
    value = _status(pid).get("VmRSS", "0 kB").split()
    return int(value[0]) * 1024 if value else 0


def descendants(pid: int) -> set[int]:
    """Every live process whose chain of parents reaches ``pid`` (``pid`` excluded)."""
    parents: dict[int, int] = {}
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            ppid = _status(int(entry.name)).get("PPid")
            if ppid and ppid.isdigit():
                parents[int(entry.name)] = int(ppid)
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        children = {child for child, parent in parents.items() if parent in frontier}
        frontier = children - found
        found |= children
    return found


def tree_rss_bytes(pid: int) -> int:
    """RSS of ``pid`` plus every descendant's."""
    return rss_bytes(pid) + sum(rss_bytes(child) for child in descendants(pid))


class MemorySampler:
    """Sample named processes (``{name: pid}``; a name ending in ``_tree`` sums the tree).

    Attributes (read after the ``with`` block):
        first_mb, peak_mb, last_mb: per name, the first, largest and last sample in MiB.
        samples: how many rounds were taken.
        history: ``(monotonic time, {name: MiB})`` of every round, in order.
    """

    def __init__(self, pids: dict[str, int], interval_s: float = 0.25) -> None:
        self.pids = dict(pids)
        self.interval_s = interval_s
        self.first_mb: dict[str, float] = {}
        self.peak_mb: dict[str, float] = dict.fromkeys(pids, 0.0)
        self.last_mb: dict[str, float] = {}
        self.samples = 0
        self.history: list[tuple[float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-memory", daemon=True)

    def sample(self) -> dict[str, float]:
        """One round now (also recorded)."""
        values = {
            name: (tree_rss_bytes(pid) if name.endswith("_tree") else rss_bytes(pid)) / 2**20
            for name, pid in self.pids.items()
        }
        for name, value in values.items():
            self.first_mb.setdefault(name, value)
            self.peak_mb[name] = max(self.peak_mb[name], value)
        self.last_mb = values
        self.samples += 1
        self.history.append((time.monotonic(), values))
        return values

    def peak_between(self, name: str, start: float, end: float) -> float:
        """The largest sample of ``name`` taken in ``[start, end]`` (monotonic seconds)."""
        return max((v[name] for t, v in self.history if start <= t <= end), default=0.0)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> MemorySampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.sample()
