"""The report's figures and per-category figures, found in (or drawn into) a run folder.

:mod:`pipeline._report` formats a run record; the pictures it embeds are files of the run
folder: the training curve next to ``train/metrics.jsonl``, the AP-per-category chart, and the
benchmark's ``bench/bench.png``. This module finds each one, draws the two that training's
data can give when they are missing (so a report rewritten from an old run folder still has
them), and returns links relative to the run folder. A figure that cannot be drawn is left out
with a warning: the report's tables carry the same numbers.

Where the per-category AP comes from, first match wins: ``record["training"]["per_category"]``,
``record["training"]["metrics"]["per_category"]``, then the ``metrics.jsonl`` record of the epoch
that made the best checkpoint.

Example:
    >>> figures = collect_figures(record, Path("runs/20260101-120000"))  # doctest: +SKIP
    >>> figures.training_curve.path                                    # doctest: +SKIP
    'train/training_curve.png'
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training import METRICS_FILE
from training.engine import PER_CATEGORY
from training.figures import (
    CATEGORY_AP_FILE,
    CURVE_FILE,
    plot_category_ap,
    plot_training_curve,
    read_epochs,
)

__all__ = ["Figure", "ReportFigures", "collect_figures", "per_category_results"]

logger = logging.getLogger(__name__)

_BENCH_PLOT = Path("bench") / "bench.png"


@dataclass(frozen=True)
class Figure:
    """One PNG of the run folder: its path relative to the folder (POSIX), and a caption."""

    path: str
    caption: str


@dataclass(frozen=True)
class ReportFigures:
    """The figures a report embeds; ``None`` where the run has none."""

    training_curve: Figure | None = None
    category_ap: Figure | None = None
    latency: Figure | None = None
    #: The latency plot of each ``bench.photo_sizes`` entry that has one, by size (``4000x3000``).
    photo_latency: Mapping[str, Figure] = field(default_factory=dict)


def _training_dir(record: Mapping[str, Any], run_dir: Path) -> Path:
    training = record.get("training")
    output = training.get("output_dir") if isinstance(training, Mapping) else None
    return Path(output) if isinstance(output, str) and output else run_dir / "train"


def _relative(path: Path, run_dir: Path) -> str:
    return Path(os.path.relpath(path, run_dir)).as_posix()


def _recorded(record: Mapping[str, Any], section: str, key: str, run_dir: Path) -> Path | None:
    """A figure path a stage put into the record (relative to the run folder), if it exists."""
    entry = record.get(section)
    value = entry.get(key) if isinstance(entry, Mapping) else None
    if not isinstance(value, str) or not value:
        return None
    path = run_dir / value
    return path if path.is_file() else None


def _is_table(value: Any) -> bool:
    return isinstance(value, Mapping) and bool(value)


def per_category_results(
    record: Mapping[str, Any], run_dir: Path
) -> dict[str, dict[str, Any]] | None:
    """``{"<id>": {"name", "AP", "AP50"}}`` of the evaluated checkpoint, or ``None``."""
    training = record.get("training")
    if not isinstance(training, Mapping):
        return None
    metrics = training.get("metrics")
    for candidate in (
        training.get(PER_CATEGORY),
        metrics.get(PER_CATEGORY) if isinstance(metrics, Mapping) else None,
    ):
        if _is_table(candidate):
            return {str(k): dict(v) for k, v in candidate.items() if isinstance(v, Mapping)}
    evaluated = [
        r
        for r in read_epochs(_training_dir(record, run_dir) / METRICS_FILE)
        if isinstance(r.get("val"), Mapping) and _is_table(r["val"].get(PER_CATEGORY))
    ]
    if not evaluated:
        return None
    chosen = evaluated[-1]
    best_metric, best_value = training.get("best_metric"), training.get("best_value")
    if isinstance(best_metric, str) and isinstance(best_value, (int, float)):
        # best.pt is the first epoch that reached the best value (training keeps a strict ">").
        chosen = next((r for r in evaluated if r["val"].get(best_metric) == best_value), chosen)
    table = chosen["val"][PER_CATEGORY]
    return {str(k): dict(v) for k, v in table.items() if isinstance(v, Mapping)}


def _training_curve(record: Mapping[str, Any], run_dir: Path) -> Path | None:
    recorded = _recorded(record, "training", "curve", run_dir)
    if recorded is not None:
        return recorded
    folder = _training_dir(record, run_dir)
    metrics, png = folder / METRICS_FILE, folder / CURVE_FILE
    if not metrics.is_file():
        return png if png.is_file() else None
    if png.is_file() and png.stat().st_mtime >= metrics.stat().st_mtime:
        return png  # training drew it from this very file
    return plot_training_curve(metrics, png)


def _drawn(what: str, draw: Any) -> Path | None:
    try:
        return draw()
    except Exception as error:  # a figure is an extra: the report's tables hold the numbers
        logger.warning("the report's %s was not drawn: %s", what, error)
        return None


def collect_figures(
    record: Mapping[str, Any],
    run_dir: Path,
    per_category: Mapping[str, Mapping[str, Any]] | None = None,
) -> ReportFigures:
    """Find or draw every figure of the run in ``run_dir``; see the module docstring."""
    curve = _drawn("training curve", lambda: _training_curve(record, run_dir))
    chart = None
    if per_category:
        png = _training_dir(record, run_dir) / CATEGORY_AP_FILE
        chart = _drawn("AP-per-category chart", lambda: plot_category_ap(per_category, png))
    latency = _recorded(record, "bench", "plot", run_dir)
    if latency is None and isinstance(record.get("bench"), Mapping):
        latency = run_dir / _BENCH_PLOT if (run_dir / _BENCH_PLOT).is_file() else None
    return ReportFigures(
        training_curve=(
            Figure(_relative(curve, run_dir), "training loss and validation AP per epoch")
            if curve
            else None
        ),
        category_ap=(
            Figure(_relative(chart, run_dir), "validation AP (and AP50) per category")
            if chart
            else None
        ),
        latency=(
            Figure(_relative(latency, run_dir), "latency distribution and throughput")
            if latency
            else None
        ),
        photo_latency=_photo_latency(record, run_dir),
    )


def _photo_latency(record: Mapping[str, Any], run_dir: Path) -> dict[str, Figure]:
    bench = record.get("bench")
    entries = bench.get("photo_sizes") if isinstance(bench, Mapping) else None
    figures = {}
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, Mapping):
            continue
        size, plot = entry.get("size"), entry.get("plot")
        if isinstance(size, str) and isinstance(plot, str) and (run_dir / plot).is_file():
            figures[size] = Figure(
                Path(plot).as_posix(), f"latency distribution and throughput, {size} JPEGs"
            )
    return figures
