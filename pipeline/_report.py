"""Write the pipeline's report (Markdown and HTML) from the run record.

The run record (``run.json``) is the single source: every stage adds its results to it, and this
module only formats them, so a report can be rewritten from a run folder at any time. The HTML is
self-contained (no scripts, no network), every value is escaped, and images are linked by their
path relative to the run folder: the smoke predictions, the training curve, the AP-per-category
chart and the benchmark's latency plot (:mod:`pipeline._report_figures` finds or draws them).
COCO's ``-1`` (no ground truth of that size or category) is shown as "n/a".

Example:
    >>> write_report(record, Path("runs/20260101-120000"))     # doctest: +SKIP
    (PosixPath('runs/.../report.md'), PosixPath('runs/.../report.html'))
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pipeline._report_figures import Figure, ReportFigures, collect_figures, per_category_results
from training.engine import format_metric

__all__ = ["write_report"]

_METRIC_ORDER = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value).lower()
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _sci(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.1e}"
    return _fmt(value)


def _metric_rows(metrics: Mapping[str, Any]) -> list[list[str]]:
    keys = [k for k in _METRIC_ORDER if k in metrics] + sorted(
        k for k in metrics if k not in _METRIC_ORDER and isinstance(metrics[k], (int, float))
    )
    return [
        [k, format_metric(metrics[k]) if k.startswith(("AP", "AR")) else _fmt(int(metrics[k]))]
        for k in keys
    ]


def _points(value: Any) -> str:
    """COCO AP x 100 (the served-accuracy and precision-gate figures); -100 is COCO's -1."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
        return "n/a"
    return _fmt(value, 2)


def _category_rows(per_category: Mapping[str, Mapping[str, Any]]) -> list[list[str]]:
    return [
        [
            str(entry.get("name", key)),
            key,
            format_metric(entry.get("AP")),
            format_metric(entry.get("AP50")),
        ]
        for key, entry in per_category.items()
    ]


def _stage_rows(stages: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    return [
        [s.get("name", "?"), s.get("status", "?"), _fmt(s.get("seconds"), 1), s.get("note", "")]
        for s in stages
    ]


def _latency_rows(bench: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    return [
        [
            "/".join(str(r[k]) for k in ("protocol", "wire") if r.get(k)),
            str(r.get("concurrency", "")),
            str(r.get("count", "")),
            _fmt(r.get("p50_ms"), 1),
            _fmt(r.get("p90_ms"), 1),
            _fmt(r.get("p99_ms"), 1),
            _fmt(r.get("mean_ms"), 1),
            _fmt(r.get("throughput"), 2),
            _fmt(r.get("bytes_per_request"), 0),
            _fmt(r.get("client_cpu_ms"), 1),
        ]
        for r in bench
    ]


def _bench_blocks(bench: Mapping[str, Any], plot: Figure | None) -> list[tuple[str, Any]]:
    """Conditions, one row per setting (and the eager baseline), the ratios, the plot."""
    blocks: list[tuple[str, Any]] = []
    if bench.get("conditions"):
        blocks.append(("text", bench["conditions"]))
    rows = [*bench.get("results", []), *([bench["baseline"]] if bench.get("baseline") else [])]
    blocks.append(("table", (_LATENCY_HEADER, _latency_rows(rows))))
    ratios = bench.get("ratios") or {}
    if ratios:
        table = [[ratio_label(key), f"{value:.2f}x"] for key, value in sorted(ratios.items())]
        blocks.append(("table", (["ratio, measured side by side in this run", "value"], table)))
    return blocks + _figure(plot)


_RATIO_LABELS = (
    (
        re.compile(r"(\w+)_(encoded|pixels)_p50_speedup_at_c(\d+)"),
        "{0}/{1}: eager p50 / served p50 (concurrency {2}): how much faster served is",
    ),
    (
        re.compile(r"(\w+)_(encoded|pixels)_best_throughput_ratio"),
        "{0}/{1}: best served images/s / eager images/s",
    ),
    (re.compile(r"(\w+)_pixels_over_encoded_p50"), "{0}: pixels p50 / encoded p50"),
    (re.compile(r"(\w+)_pixels_over_encoded_bytes"), "{0}: pixels bytes / encoded bytes"),
    (
        re.compile(r"(\w+)_pixels_over_encoded_client_cpu"),
        "{0}: pixels client CPU / encoded client CPU",
    ),
    (
        re.compile(r"(\w+)_encoded_client_cpu_over_pillow_decode_c(\d+)"),
        "{0}/encoded: client CPU / a bare Pillow decode of the file (concurrency {1})",
    ),
    (
        re.compile(r"(\w+)_encoded_bytes_over_file"),
        "{0}/encoded: bytes per request / the image file's size",
    ),
)


def ratio_label(key: str) -> str:
    """A reader's name for one of the benchmark's ratio keys (the key itself when unknown)."""
    for pattern, label in _RATIO_LABELS:
        match = pattern.fullmatch(key)
        if match:
            return label.format(*match.groups())
    return key


_LATENCY_HEADER = [
    "protocol/wire",
    "concurrency",
    "requests",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "mean ms",
    "images/s",
    "bytes/request",
    "client CPU ms",
]


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = [
        "| " + " | ".join(cell(h) for h in header) + " |",
        "|" + "|".join(" --- " for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(figure: Figure | None) -> list[tuple[str, Any]]:
    return [("figure", (figure.path, figure.caption))] if figure is not None else []


def _sections(
    record: Mapping[str, Any],
    figures: ReportFigures,
    per_category: Mapping[str, Mapping[str, Any]] | None,
) -> list[tuple[str, list[tuple[str, Any]]]]:
    """(title, blocks) where a block is ("text", str), ("table", (header, rows)),
    ("images", [(path, caption)]) or ("figure", (path, caption)), a plot at full width."""
    sections: list[tuple[str, list[tuple[str, Any]]]] = []
    summary = [
        ["status", record.get("status", "?")],
        ["run folder", record.get("run_dir", "")],
        ["model", f"{record.get('model_name', '')} version {record.get('model_version', '-')}"],
        ["version folder", record.get("version_dir", "-")],
        ["dataset", record.get("dataset", "")],
        ["started (UTC)", record.get("started", "")],
        ["total time", f"{_fmt(record.get('seconds'), 1)} s"],
    ]
    if record.get("error"):
        summary.append(["error", record["error"]])
    sections.append(("Summary", [("table", (["", ""], summary))]))
    sections.append(
        (
            "Stages",
            [
                (
                    "table",
                    (["stage", "status", "seconds", "note"], _stage_rows(record.get("stages", []))),
                )
            ],
        )
    )
    data = record.get("data")
    if data:
        rows = [
            [
                c.get("name", ""),
                str(c.get("dataset_id", "")),
                str(c.get("annotations", "")),
                str(c.get("images", "")),
            ]
            for c in data.get("categories", [])
        ]
        blocks: list[tuple[str, Any]] = [
            (
                "text",
                f"{data.get('images', '?')} images, "
                f"{data.get('training_boxes', '?')} training boxes, "
                f"{data.get('negative_images', '?')} images without objects.",
            )
        ]
        if rows:
            blocks.append(("table", (["category", "id", "boxes", "images"], rows)))
        sections.append(("Dataset", blocks))
    training = record.get("training")
    if training:
        blocks = [
            (
                "text",
                f"{training.get('epochs', '?')} epoch(s) in "
                f"{_fmt(training.get('seconds'), 1)} s; checkpoint "
                f"{training.get('checkpoint', '-')}.",
            )
        ]
        blocks += _figure(figures.training_curve)
        metrics = training.get("metrics") or {}
        if metrics:
            blocks.append(("table", (["COCO metric (validation)", "value"], _metric_rows(metrics))))
        if per_category:
            blocks.append(
                (
                    "table",
                    (["category", "id", "AP (validation)", "AP50"], _category_rows(per_category)),
                )
            )
        blocks += _figure(figures.category_ap)
        sections.append(("Training and evaluation", blocks))
    export = record.get("export")
    if export:
        rows = [
            [str(k), _fmt(v, 4)]
            for k, v in (export.get("validation") or {}).items()
            if not isinstance(v, (dict, list))
        ]
        blocks = [
            (
                "text",
                f"Version {export.get('version', '?')} written to "
                f"{export.get('version_dir', '?')}.",
            )
        ]
        if rows:
            blocks.append(
                ("table", (["export validation (PyTorch vs onnxruntime)", "value"], rows))
            )
        checks = (export.get("validation") or {}).get("images") or []
        if checks and all(isinstance(c, dict) for c in checks):
            blocks.append(
                (
                    "table",
                    (
                        [
                            "image",
                            "size",
                            "PyTorch dets",
                            "ONNX dets",
                            "min IoU",
                            "max score diff",
                            "passed",
                        ],
                        [
                            [
                                str(c.get("image", "")),
                                f"{c.get('width', '?')}x{c.get('height', '?')}",
                                str(c.get("pytorch_detections", "")),
                                str(c.get("onnx_detections", "")),
                                _fmt(c.get("min_iou"), 4),
                                _sci(c.get("max_score_diff")),
                                _fmt(c.get("passed")),
                            ]
                            for c in checks
                        ],
                    ),
                )
            )
        gate = export.get("precision") or {}
        if gate.get("precision"):
            reduced = gate.get(gate["precision"]) or {}
            blocks.append(
                (
                    "table",
                    (
                        [f"accuracy gate ({gate['precision']} vs fp32, validation split)", "value"],
                        [
                            ["passed", _fmt(gate.get("passed"))],
                            ["COCO AP fp32", _points((gate.get("fp32") or {}).get("AP"))],
                            [f"COCO AP {gate['precision']}", _points(reduced.get("AP"))],
                            [
                                "AP drop (max)",
                                f"{_fmt(gate.get('ap_drop'), 2)} "
                                f"({_fmt(gate.get('max_ap_drop'), 2)})",
                            ],
                        ],
                    ),
                )
            )
        sections.append(("Export", blocks))
    smoke = record.get("smoke")
    if smoke:
        images = [(p.get("image", ""), p.get("caption", "")) for p in smoke.get("predictions", [])]
        blocks = [
            (
                "text",
                f"{smoke.get('detections', 0)} detections on {len(images)} images "
                f"(score ≥ {smoke.get('score_threshold', '?')}) through "
                f"{smoke.get('url', '?')}.",
            )
        ]
        if images:
            blocks.append(("images", images))
        sections.append(("Smoke prediction through Triton", blocks))
    accuracy = record.get("accuracy")
    if accuracy:
        rows = [
            ["eager PyTorch (training's evaluation)", _points(accuracy.get("eager_AP"))],
            ["served, encoded through Triton", _points(accuracy.get("served_AP"))],
            ["gap (tolerance)", f"{_fmt(accuracy.get('ap_gap'), 2)} ({accuracy.get('tolerance')})"],
            ["within tolerance", _fmt(accuracy.get("within_tolerance"))],
        ]
        sections.append(
            (
                "Served accuracy",
                [
                    (
                        "text",
                        f"COCO AP (x100) on the {accuracy.get('images', '?')} validation images, "
                        "the same checkpoint both ways.",
                    ),
                    ("table", (["path", "COCO AP"], rows)),
                ],
            )
        )
    bench = record.get("bench")
    if bench:
        sections.append(("Latency benchmark", _bench_blocks(bench, figures.latency)))
        for photo in bench.get("photo_sizes") or []:
            size = photo.get("size", "?")
            blocks = _bench_blocks(photo, figures.photo_latency.get(size))
            sections.append((f"Latency benchmark, {size} photos", blocks))
    next_steps = record.get("next_steps") or []
    if next_steps:
        sections.append(("Next steps", [("code", "\n".join(next_steps))]))
    return sections


def _link(path: str) -> str:
    """A relative path as a URL path: spaces, brackets, ``#``, ``?`` and quotes encoded."""
    return quote(str(path), safe="/")


def _alt(caption: str) -> str:
    return (
        str(caption)
        .replace("\\", "\\\\")
        .replace("[", "\\[")
        .replace("]", "\\]")
        .replace("\n", " ")
    )


def _markdown(
    record: Mapping[str, Any],
    figures: ReportFigures,
    per_category: Mapping[str, Mapping[str, Any]] | None,
) -> str:
    out = [f"# detstack pipeline run {record.get('run_id', '')}", ""]
    for title, blocks in _sections(record, figures, per_category):
        out += [f"## {title}", ""]
        for kind, content in blocks:
            if kind == "text":
                out += [content, ""]
            elif kind == "code":
                out += ["```", content, "```", ""]
            elif kind == "table":
                header, rows = content
                out += [_md_table(header, rows), ""]
            elif kind == "images":
                out += [f"![{_alt(caption)}]({_link(path)})" for path, caption in content] + [""]
            elif kind == "figure":
                path, caption = content
                out += [f"![{_alt(caption)}]({_link(path)})", ""]
    return "\n".join(out)


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1000px;margin:24px auto;padding:0 16px;
color:#1d2330}table{border-collapse:collapse;margin:8px 0 16px}th,td{border-bottom:1px solid
#d8dee6;padding:4px 10px;text-align:left;font-variant-numeric:tabular-nums}figure{display:
inline-block;margin:6px}figure img{max-width:300px;image-rendering:pixelated;border:1px solid
#d8dee6}figcaption{font-size:.8rem;color:#5f6b7a}pre{background:#f5f7fa;padding:10px;
overflow:auto}figure.plot{display:block;margin:8px 0 16px}figure.plot img{max-width:100%;
image-rendering:auto;border:none}
"""


def _html(
    record: Mapping[str, Any],
    figures: ReportFigures,
    per_category: Mapping[str, Mapping[str, Any]] | None,
) -> str:
    title = html.escape(f"detstack pipeline run {record.get('run_id', '')}")
    out = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{title}</title><style>{_CSS}</style></head><body>",
        f"<h1>{title}</h1>",
    ]
    for section_title, blocks in _sections(record, figures, per_category):
        out.append(f"<h2>{html.escape(section_title)}</h2>")
        for kind, content in blocks:
            if kind == "text":
                out.append(f"<p>{html.escape(content)}</p>")
            elif kind == "code":
                out.append(f"<pre>{html.escape(content)}</pre>")
            elif kind == "table":
                out.append(_html_table(*content))
            elif kind == "images":
                for path, caption in content:
                    out.append(_html_figure(path, caption))
            elif kind == "figure":
                out.append(_html_figure(*content, css_class="plot"))
    out.append("</body></html>")
    return "\n".join(out)


def _html_figure(path: str, caption: str, css_class: str | None = None) -> str:
    attribute = f' class="{html.escape(css_class, quote=True)}"' if css_class else ""
    return (
        f'<figure{attribute}><img src="{html.escape(_link(path), quote=True)}" '
        f'alt="{html.escape(str(caption), quote=True)}"><figcaption>'
        f"{html.escape(str(caption))}</figcaption></figure>"
    )


def write_report(record: Mapping[str, Any], run_dir: Path) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into ``run_dir``; return their paths.

    The figures are found in ``run_dir`` (the training curve and the AP-per-category chart are
    drawn there when the run has their data but not the PNG); a missing one leaves its place
    out, never the report.
    """
    run_dir = Path(run_dir)
    per_category = per_category_results(record, run_dir)
    figures = collect_figures(record, run_dir, per_category)
    markdown_path = run_dir / "report.md"
    html_path = run_dir / "report.html"
    markdown_path.write_text(_markdown(record, figures, per_category), encoding="utf-8")
    html_path.write_text(_html(record, figures, per_category), encoding="utf-8")
    return markdown_path, html_path
