"""The pipeline report writer: every section from the run record, values escaped in HTML."""

from __future__ import annotations

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
