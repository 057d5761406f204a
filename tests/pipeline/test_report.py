"""The pipeline report writer: every section from the run record, values escaped in HTML,
the figures of the run folder embedded, COCO's -1 shown as n/a."""

from __future__ import annotations

import json

import pytest
from PIL import Image

import pipeline._report_figures as figures
from cli.main import main
from pipeline._report import write_report


def _record() -> dict:
    return {
        "run_id": "20260101-000000",
        "status": "failed",
        "failed_stage": "export",
        "error": "bad <b>thing</b> & more",
        "model_name": "m",
        "stages": [
            {"name": "data", "status": "done", "seconds": 1.0, "note": "<script>x</script>"}
        ],
        "data": {
            "images": 3,
            "training_boxes": 4,
            "negative_images": 0,
            "categories": [{"name": "<img src=x>", "dataset_id": 0, "annotations": 4, "images": 3}],
        },
        "training": {
            "epochs": 1,
            "seconds": 2.0,
            "checkpoint": "best.pt",
            "metrics": {"AP": 0.5, "AP50": 0.75},
        },
        "bench": {
            "conditions": "c",
            "results": [
                {
                    "protocol": "grpc",
                    "concurrency": 1,
                    "count": 4,
                    "p50_ms": 10.0,
                    "p90_ms": 11.0,
                    "p99_ms": 12.0,
                    "mean_ms": 10.5,
                    "throughput": 95.0,
                }
            ],
        },
    }


def test_report_has_every_section_and_escapes_every_value_in_html(tmp_path):
    markdown_path, html_path = write_report(_record(), tmp_path)
    markdown = markdown_path.read_text()
    for heading in (
        "## Summary",
        "## Stages",
        "## Dataset",
        "## Training and evaluation",
        "## Latency benchmark",
    ):
        assert heading in markdown
    assert "| AP50 | 0.750 |" in markdown
    assert "| grpc | 1 | 4 | 10.0 | 11.0 | 12.0 | 10.5 | 95.00 |" in markdown
    html = html_path.read_text()
    assert "<script>x</script>" not in html and "&lt;script&gt;x&lt;/script&gt;" in html
    assert "<img src=x>" not in html and "bad &lt;b&gt;thing&lt;/b&gt; &amp; more" in html


def test_print_config_shows_the_effective_configuration_without_running(capsys):
    assert main(["pipeline", "--print-config", "--epochs", "7", "--model", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 7" in out and "architecture: tiny" in out and "token" not in out


# ------------------------------------------------------------------ figures, per-category, n/a

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_PER_CATEGORY = {
    "1": {"name": "circle", "AP": 0.5, "AP50": 0.8},
    "7": {"name": "<b>square</b>", "AP": -1.0, "AP50": -1.0},
}


def _valid_png(path) -> bool:
    if not path.read_bytes().startswith(PNG_SIGNATURE):
        return False
    with Image.open(path) as image:
        image.verify()
        return image.format == "PNG"


def _epoch(number: int, ap: float, per_category: dict | None = None) -> dict:
    val = {"AP": ap, "AP50": ap + 0.1, "APm": -1.0}
    if per_category is not None:
        val["per_category"] = per_category
    return {"epoch": number, "train": {"loss": 2.0 / number, "loss_classifier": 1.0}, "val": val}


def _run_folder(tmp_path, train_name: str = "train") -> tuple[dict, object]:
    """A run folder as the stages leave it: metrics.jsonl from training, bench.png from bench."""
    train_dir = tmp_path / train_name
    train_dir.mkdir()
    (train_dir / "metrics.jsonl").write_text(
        json.dumps(_epoch(1, 0.3, _PER_CATEGORY)) + "\n" + json.dumps(_epoch(2, 0.4)) + "\n"
    )
    (tmp_path / "bench").mkdir()
    Image.new("RGB", (40, 20), "white").save(tmp_path / "bench" / "bench.png")
    record = _record()
    record["training"]["output_dir"] = str(train_dir)
    return record, train_dir


def test_report_embeds_the_training_curve_the_category_chart_and_the_latency_plot(tmp_path):
    record, train_dir = _run_folder(tmp_path)
    markdown_path, html_path = write_report(record, tmp_path)
    assert _valid_png(train_dir / "training_curve.png")
    assert _valid_png(train_dir / "per_category_ap.png")
    markdown, html = markdown_path.read_text(), html_path.read_text()
    for link in ("train/training_curve.png", "train/per_category_ap.png", "bench/bench.png"):
        assert f"]({link})" in markdown
        assert f'<img src="{link}"' in html
    assert markdown.index("training_curve.png") < markdown.index("## Latency benchmark")
    assert markdown.index("## Latency benchmark") < markdown.index("bench/bench.png")


def test_report_shows_the_per_category_table_with_n_a_and_escaped_names(tmp_path):
    record, _ = _run_folder(tmp_path)
    markdown_path, html_path = write_report(record, tmp_path)
    markdown, html = markdown_path.read_text(), html_path.read_text()
    assert "| circle | 1 | 0.500 | 0.800 |" in markdown
    assert "| <b>square</b> | 7 | n/a | n/a |" in markdown
    assert "<b>square</b>" not in html and "&lt;b&gt;square&lt;/b&gt;" in html


def test_per_category_ap_comes_from_the_epoch_of_the_best_checkpoint(tmp_path):
    record, train_dir = _run_folder(tmp_path)
    later = {"1": {"name": "circle", "AP": 0.1, "AP50": 0.2}}
    (train_dir / "metrics.jsonl").write_text(
        json.dumps(_epoch(1, 0.6, _PER_CATEGORY)) + "\n" + json.dumps(_epoch(2, 0.4, later)) + "\n"
    )
    record["training"].update(best_metric="AP", best_value=0.6)
    markdown = write_report(record, tmp_path)[0].read_text()
    assert "| circle | 1 | 0.500 | 0.800 |" in markdown and "0.100" not in markdown
    record["training"].pop("best_value")
    markdown = write_report(record, tmp_path)[0].read_text()
    assert "| circle | 1 | 0.100 | 0.200 |" in markdown  # no best recorded: the last evaluation


def test_per_category_ap_in_the_record_wins_over_the_metrics_file(tmp_path):
    record, _ = _run_folder(tmp_path)
    record["training"]["metrics"]["per_category"] = {"3": {"name": "tri", "AP": 0.25, "AP50": 1}}
    markdown = write_report(record, tmp_path)[0].read_text()
    assert "| tri | 3 | 0.250 | 1.000 |" in markdown and "circle" not in markdown
    assert "| per_category" not in markdown  # the nested table is not a metric row


def test_coco_minus_one_shows_as_n_a_never_as_minus_one(tmp_path):
    record = _record()
    record["training"]["metrics"] = {"AP": 0.5, "APs": 0.25, "APm": -1.0, "APl": -1.0, "ARl": -1}
    record["accuracy"] = {"eager_AP": -100.0, "served_AP": 12.5, "ap_gap": 0.0, "tolerance": 1}
    markdown_path, html_path = write_report(record, tmp_path)
    markdown = markdown_path.read_text()
    assert (
        "| APm | n/a |" in markdown and "| APl | n/a |" in markdown and "| ARl | n/a |" in markdown
    )
    assert (
        "| APs | 0.250 |" in markdown and "| served, encoded through Triton | 12.50 |" in markdown
    )
    for text in (markdown, html_path.read_text()):
        assert "-1.000" not in text and "-100.00" not in text


def test_report_without_any_figure_or_metrics_file_still_writes_every_section(tmp_path):
    markdown_path, html_path = write_report(_record(), tmp_path)
    assert "## Latency benchmark" in markdown_path.read_text()
    assert "<img" not in html_path.read_text()
    assert not list(tmp_path.rglob("*.png"))


def test_links_to_figures_in_odd_folder_names_are_url_encoded_and_escaped(tmp_path):
    record, _ = _run_folder(tmp_path, train_name='tr "a" #1')
    markdown_path, html_path = write_report(record, tmp_path)
    link = "tr%20%22a%22%20%231/training_curve.png"
    assert f"]({link})" in markdown_path.read_text()
    assert f'<img src="{link}"' in html_path.read_text()


def test_a_figure_that_cannot_be_drawn_is_left_out_and_the_report_is_written(
    tmp_path, monkeypatch, caplog
):
    def broken(*_args):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(figures, "plot_training_curve", broken)
    record, _ = _run_folder(tmp_path)
    markdown = write_report(record, tmp_path)[0].read_text()
    assert "training_curve.png" not in markdown and "per_category_ap.png" in markdown
    assert "no fonts" in caplog.text


def test_a_curve_training_already_drew_is_embedded_without_redrawing(tmp_path, monkeypatch):
    record, train_dir = _run_folder(tmp_path)
    write_report(record, tmp_path)
    drawn = (train_dir / "training_curve.png").read_bytes()
    monkeypatch.setattr(figures, "plot_training_curve", lambda *_: pytest.fail("redrawn"))
    markdown = write_report(record, tmp_path)[0].read_text()
    assert "](train/training_curve.png)" in markdown
    assert (train_dir / "training_curve.png").read_bytes() == drawn


# ------------------------------------------------------------------ served vs eager, photo sizes


def _bench_row(protocol: str, p50: float, wire: str | None = "encoded") -> dict:
    return {
        "protocol": protocol,
        "wire": wire,
        "concurrency": 1,
        "count": 10,
        "p50_ms": p50,
        "p90_ms": p50 + 1,
        "p99_ms": p50 + 2,
        "mean_ms": p50,
        "throughput": 1000 / p50,
    }


def test_the_latency_sections_show_the_eager_baseline_the_ratios_and_each_photo_size(tmp_path):
    record = _record()
    record["bench"]["baseline"] = _bench_row("pytorch-eager", 40.0, wire=None)
    record["bench"]["ratios"] = {
        "grpc_encoded_p50_speedup_at_c1": 1.6,
        "grpc_encoded_bytes_over_file": 1.0,
        "grpc_encoded_client_cpu_over_pillow_decode_c1": 0.45,
        "something_new": 2.0,
    }
    record["bench"]["photo_sizes"] = [
        {
            "size": "4000x3000",
            "conditions": "photo conditions",
            "results": [_bench_row("grpc", 80.0), _bench_row("grpc", 260.0, "pixels")],
            "baseline": _bench_row("pytorch-eager", 400.0, wire=None),
            "ratios": {"grpc_pixels_over_encoded_p50": 3.25},
            "plot": "bench/photo-4000x3000/bench.png",
        }
    ]
    plot = tmp_path / "bench" / "photo-4000x3000" / "bench.png"
    plot.parent.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(plot)
    markdown = write_report(record, tmp_path)[0].read_text()
    assert "| pytorch-eager | 1 | 10 | 40.0 |" in markdown
    assert (
        "| grpc/encoded: eager p50 / served p50 (concurrency 1): how much faster served is "
        "| 1.60x |" in markdown
    )
    assert "| grpc/encoded: bytes per request / the image file's size | 1.00x |" in markdown
    assert "a bare Pillow decode of the file (concurrency 1) | 0.45x |" in markdown
    assert "| something_new | 2.00x |" in markdown  # an unknown ratio keeps its key
    photos = markdown.split("## Latency benchmark, 4000x3000 photos", 1)[1]
    assert "photo conditions" in photos
    assert "| grpc/pixels | 1 | 10 | 260.0 |" in photos
    assert "| pytorch-eager | 1 | 10 | 400.0 |" in photos
    assert "| grpc: pixels p50 / encoded p50 | 3.25x |" in photos
    assert "](bench/photo-4000x3000/bench.png)" in photos
