"""Render a :class:`bench._harness.BenchReport`: a terminal table, JSON, CSV and a PNG plot.

Used by ``detstack bench`` only (library code returns data, the CLI shows it).

Example:
    >>> print(format_table(report))                                    # doctest: +SKIP
    >>> write_report(report, Path("bench-results"))                    # doctest: +SKIP
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from bench._results import BASELINE, BenchReport, LatencyResult

__all__ = ["format_table", "write_report"]

_COLUMNS = (
    ("label", "transport/wire", "{}"),
    ("concurrency", "conc", "{}"),
    ("count", "n", "{}"),
    ("p50_ms", "p50 ms", "{:.1f}"),
    ("p90_ms", "p90 ms", "{:.1f}"),
    ("p95_ms", "p95 ms", "{:.1f}"),
    ("p99_ms", "p99 ms", "{:.1f}"),
    ("mean_ms", "mean ms", "{:.1f}"),
    ("throughput", "infer/s", "{:.2f}"),
    ("bytes_per_request", "bytes/req", "{:,.0f}"),
    ("client_cpu_ms", "client cpu ms", "{:.1f}"),
    ("client_decode_ms", "decode ms", "{:.1f}"),
    ("client_encode_ms", "encode ms", "{:.2f}"),
    ("server_queue_ms", "srv queue ms", "{:.1f}"),
    ("server_compute_ms", "srv compute ms", "{:.1f}"),
    ("network_overhead_ms", "net+ser ms", "{:.1f}"),
)


def _cell(value: object, pattern: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return pattern.format(value)


def _rows(report: BenchReport) -> list[LatencyResult]:
    return list(report.results) + ([report.baseline] if report.baseline else [])


def format_table(report: BenchReport) -> str:
    """A fixed-width table of every result, then the ratios and the conditions."""
    header = [title for _, title, _ in _COLUMNS]
    body = [
        [
            _cell(getattr(r, name), pattern) + ("*" if name == "count" and r.capped else "")
            for name, _, pattern in _COLUMNS
        ]
        for r in _rows(report)
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True))
        for row in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if any(r.capped for r in _rows(report)):
        lines.append("* stopped by the time cap before all requests were sent")
    for name, value in report.ratios.items():
        lines.append(f"{name}: {value:.2f}x")
    conditions = report.conditions
    lines.append(
        f"{conditions.get('images')} images {', '.join(conditions.get('image_sizes', []))}; "
        f"{conditions.get('cpu_count')} CPUs, load average "
        f"{conditions.get('load_average')} -> {conditions.get('load_average_after')}"
    )
    return "\n".join(lines)


def _plot(report: BenchReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _rows(report)
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    labels = [
        f"{r.label}\nc={r.concurrency}" if r.protocol != BASELINE else "eager\nPyTorch"
        for r in rows
    ]
    data = [r.latencies_ms or [float("nan")] for r in rows]
    left.boxplot(data, showfliers=True, whis=(5, 95))
    left.set_xticks(range(1, len(labels) + 1), labels, fontsize=8)
    left.set_ylabel("latency per request (ms)")
    left.set_title("latency distribution (whiskers p5-p95)")
    left.grid(axis="y", alpha=0.3)
    for protocol in dict.fromkeys(r.label for r in report.results):
        mine = sorted(
            (r for r in report.results if r.label == protocol), key=lambda r: r.concurrency
        )
        right.plot(
            [r.concurrency for r in mine],
            [r.throughput for r in mine],
            marker="o",
            label=protocol,
        )
    if report.baseline is not None:
        right.axhline(
            report.baseline.throughput, color="grey", linestyle="--", label="eager PyTorch"
        )
    right.set_xlabel("concurrency (requests in flight)")
    right.set_ylabel("throughput (inferences / s)")
    right.set_title("throughput vs concurrency")
    right.set_xticks(sorted({r.concurrency for r in report.results}))
    right.grid(alpha=0.3)
    right.legend()
    figure.suptitle(
        f"{report.conditions.get('model')} on {report.conditions.get('cpu_count')} CPUs, "
        f"{report.conditions.get('date_utc')}",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_report(report: BenchReport, directory: Path) -> dict[str, Path]:
    """Write ``bench.json``, ``bench.csv`` and ``bench.png`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": directory / "bench.json",
        "csv": directory / "bench.csv",
        "png": directory / "bench.png",
    }
    paths["json"].write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    summaries = [r.summary() for r in _rows(report)]
    with paths["csv"].open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(summaries[0]) if summaries else ["none"])
        writer.writeheader()
        writer.writerows(summaries)
    _plot(report, paths["png"])
    return paths
