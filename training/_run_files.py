"""The files of a run folder besides the checkpoints' content: names, metrics, config, best.

``OUTPUT/metrics.jsonl`` gets one JSON line per epoch (appended and fsynced, so a crash keeps
every finished epoch); a resumed run first rewrites it without the epochs after its checkpoint
(atomically). ``best.pt`` is made the same file as ``last.pt`` (a hard link, no second copy of
the weights). ``train_config.json`` is the configuration as plain JSON, for people and tools.

Example:
    >>> append_metrics(Path("runs/x") / METRICS_FILE, {"epoch": 1})      # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from detstack.atomic import atomic_replace_with_link, atomic_write_json, atomic_write_text

__all__ = [
    "BEST_CHECKPOINT",
    "CONFIG_FILE",
    "LAST_CHECKPOINT",
    "METRICS_FILE",
    "append_metrics",
    "link_best",
    "read_history",
    "write_config",
]

LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "train_config.json"


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    """Append one epoch's ``record`` as a JSON line, on disk before the next epoch starts."""
    with path.open("a", encoding="utf-8") as stream:
        stream.write(json.dumps(record, sort_keys=True) + "\n")
        stream.flush()
        os.fsync(stream.fileno())


def read_history(path: Path, up_to_epoch: int) -> list[dict[str, Any]]:
    """Metrics lines of epochs <= ``up_to_epoch``; the file is rewritten without the others."""
    if not path.is_file():
        return []
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            if int(record.get("epoch", 0)) <= up_to_epoch:
                kept.append(record)
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
    return kept


def link_best(last: Path, best: Path) -> None:
    """Make ``best`` the same file as ``last`` atomically (hard link, copy where impossible)."""
    atomic_replace_with_link(last, best)


def write_config(output: Path, config: dict[str, Any]) -> None:
    """Write the run's configuration (``TrainConfig.to_dict()``) to ``OUTPUT/train_config.json``."""
    atomic_write_json(output / CONFIG_FILE, config, indent=2)
