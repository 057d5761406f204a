"""Training's two figures: the curve of a run (loss and AP per epoch) and the AP of each category.

``detstack train`` draws the curve into its output folder when it finishes, and the pipeline's
report embeds both figures. They are drawn from files and dictionaries a run already writes
(``metrics.jsonl``, the ``per_category`` entry of the evaluation), so a figure can be redrawn
from a run folder at any time. Matplotlib runs on its Agg backend (no display needed) and is
imported only when a figure is drawn. Each PNG is written atomically: a reader (the report, a
browser) never sees half a file.

Example:
    >>> run = Path("runs/shapes")
    >>> plot_training_curve(run / "metrics.jsonl", run / CURVE_FILE)  # doctest: +SKIP
    PosixPath('runs/shapes/training_curve.png')
    >>> plot_category_ap(metrics["per_category"], run / CATEGORY_AP_FILE)  # doctest: +SKIP
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from detstack.atomic import atomic_write_bytes
from training._run_files import METRICS_FILE

__all__ = [
    "CATEGORY_AP_FILE",
    "CURVE_FILE",
    "plot_category_ap",
    "plot_training_curve",
    "read_epochs",
    "write_training_curve",
]

logger = logging.getLogger(__name__)

#: File name of the training curve, next to ``metrics.jsonl``.
CURVE_FILE = "training_curve.png"
#: File name of the per-category AP chart.
CATEGORY_AP_FILE = "per_category_ap.png"
#: A metrics file is a line per epoch; one this large is not one detstack wrote.
_MAX_METRICS_BYTES = 64 * 1024 * 1024
#: Bars beyond this many categories are left out of the chart (the report's table has them all).
_MAX_BARS = 80


def read_epochs(metrics_jsonl: Path) -> list[dict[str, Any]]:
    """The per-epoch records of ``metrics.jsonl``, in epoch order, the last one of each epoch.

    A line that is not a JSON object with an integer ``epoch`` (a run killed while writing, an
    edited file) is skipped with a warning instead of failing the figure. A missing file or one
    over 64 MiB gives no epochs.
    """
    try:
        if metrics_jsonl.stat().st_size > _MAX_METRICS_BYTES:
            logger.warning("%s is over %d bytes; not plotted", metrics_jsonl, _MAX_METRICS_BYTES)
            return []
        text = metrics_jsonl.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    epochs: dict[int, dict[str, Any]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        epoch = record.get("epoch") if isinstance(record, dict) else None
        if not isinstance(epoch, int) or isinstance(epoch, bool):
            logger.warning("%s line %d is not an epoch record; skipped", metrics_jsonl, number)
            continue
        epochs[epoch] = record
    return [epochs[e] for e in sorted(epochs)]


def _number(value: Any) -> float | None:
    """A plottable value: finite and not COCO's ``-1`` (no ground truth)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


def _label(text: str, limit: int = 30) -> str:
    """Text for matplotlib, shown as written: ``$`` would start mathtext (a user's category
    name like ``$\\x$`` fails the whole figure), and long names are cut."""
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("$", r"\$")


def _series(epochs: list[dict[str, Any]], part: str, key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for record in epochs:
        section = record.get(part)
        value = _number(section.get(key)) if isinstance(section, dict) else None
        if value is not None:
            xs.append(record["epoch"])
            ys.append(value)
    return xs, ys


def _save(figure: Any, png: Path) -> Path:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", dpi=110)
    finally:
        plt.close(figure)
    png.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(png, buffer.getvalue())
    return png


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training_curve(metrics_jsonl: Path, png: Path) -> Path | None:
    """Draw the training loss and the validation AP/AP50 of each epoch into ``png``.

    Args:
        metrics_jsonl: the ``metrics.jsonl`` of a ``detstack train`` run (one record per
            epoch: ``train`` losses, ``val`` COCO metrics on the epochs that were evaluated).
        png: where the figure goes (replaced atomically).

    Returns:
        ``png``, or ``None`` when the file holds no epoch to draw (nothing is written).
    """
    epochs = read_epochs(Path(metrics_jsonl))
    if not epochs:
        return None
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    parts = sorted(
        {
            k
            for r in epochs
            if isinstance(r.get("train"), dict)
            for k in r["train"]
            if k.startswith("loss_")
        }
    )
    for key, style in [("loss", {"linewidth": 2.2, "color": "black"})] + [
        (part, {"linewidth": 1, "alpha": 0.8}) for part in parts
    ]:
        xs, ys = _series(epochs, "train", key)
        if xs:
            left.plot(xs, ys, marker="o", markersize=3, label=_label(key), **style)
    left.set_xlabel("epoch")
    left.set_ylabel("mean training loss")
    left.set_title("training loss")
    left.grid(alpha=0.3)
    if left.has_data():
        left.legend(fontsize=8)
    for key in ("AP", "AP50"):
        xs, ys = _series(epochs, "val", key)
        if xs:
            right.plot(xs, ys, marker="o", label=key)
    right.set_xlabel("epoch")
    right.set_ylabel("COCO metric (validation)")
    right.set_title("validation AP")
    right.set_ylim(0, 1.02)
    right.grid(alpha=0.3)
    if right.has_data():
        right.legend(fontsize=8)
    else:
        right.text(0.5, 0.5, "no validation", ha="center", va="center", transform=right.transAxes)
    for axes in (left, right):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.tight_layout()
    return _save(figure, Path(png))


def plot_category_ap(per_category: Mapping[str, Mapping[str, Any]], png: Path) -> Path | None:
    """Draw a horizontal bar of AP (and AP50) per category into ``png``.

    Args:
        per_category: ``{"<id>": {"name": ..., "AP": ..., "AP50": ...}}``, the ``per_category``
            entry of :func:`training.engine.evaluate`'s metrics. Categories without ground
            truth (``-1``) are drawn as "n/a" with no bar.
        png: where the figure goes (replaced atomically).

    Returns:
        ``png``, or ``None`` when there is no category (nothing is written).
    """
    rows = [
        (str(entry.get("name", key)), _number(entry.get("AP")), _number(entry.get("AP50")))
        for key, entry in per_category.items()
        if isinstance(entry, Mapping)
    ][:_MAX_BARS]
    if not rows:
        return None
    plt = _pyplot()
    height = max(2.0, 0.32 * len(rows) + 1.2)
    figure, axes = plt.subplots(figsize=(7, height))
    positions = list(range(len(rows)))
    names = [_label(name) for name, _, _ in rows]
    ap50 = [v if v is not None else 0.0 for _, _, v in rows]
    ap = [v if v is not None else 0.0 for _, v, _ in rows]
    axes.barh(positions, ap50, height=0.8, color="#c6d7ef", label="AP50")
    axes.barh(positions, ap, height=0.5, color="#2f6db5", label="AP")
    for y, (_, value, _) in enumerate(rows):
        axes.text(
            (value or 0.0) + 0.01,
            y,
            "n/a" if value is None else f"{value:.3f}",
            va="center",
            fontsize=8,
        )
    axes.set_yticks(positions, names, fontsize=8)
    axes.invert_yaxis()
    axes.set_xlim(0, 1.08)
    axes.set_xlabel("COCO AP (validation)")
    axes.set_title("AP per category")
    axes.grid(axis="x", alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    return _save(figure, Path(png))


def write_training_curve(output: Path) -> Path | None:
    """Draw ``OUTPUT/metrics.jsonl`` into ``OUTPUT/training_curve.png`` at the end of training.

    A finished run must not fail on its picture: the checkpoints and the metrics are on disk
    already, so a figure that cannot be drawn (no writable folder, a broken font cache) is
    logged as a warning and ``None`` is returned.
    """
    output = Path(output)
    try:
        png = plot_training_curve(output / METRICS_FILE, output / CURVE_FILE)
    except Exception as error:  # the run's results are safe; only its picture is missing
        logger.warning("training curve not drawn into %s: %s", output / CURVE_FILE, error)
        return None
    if png is not None:
        logger.info("training curve: %s", png)
    return png
