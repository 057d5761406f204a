"""The whole pipeline end to end on a tiny model through the real embedded Triton.

One module-scoped run (tiny model, 12 synthetic images, 1 epoch) is shared by the assertions;
the rerun and the failure tests add to the same repository, so the version bookkeeping is
tested on a repository that already holds versions.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from cli.main import main
from detstack.errors import PipelineError
from pipeline import CONFIG_FILE_NAME, load_pipeline_config, run_pipeline

pytestmark = [pytest.mark.slow, pytest.mark.triton]

_TINY = """\
name: pipeline-test-model
repository: {root}/repo
runs: {root}/runs
dataset: {{source: {root}/data, synth_images: 12}}
model: {{architecture: tiny}}
train: {{epochs: 1, batch_size: 4, warmup_iters: 2, val_fraction: 0.25}}
export: {{sample_count: 1}}
predict: {{images: 2, score_threshold: 0.0}}
bench: {{requests: 4, warmup: 1, concurrency: [1], protocols: [grpc], photo_sizes: [320x240],
        photo_requests: 2}}
"""


def _versions(root: Path) -> dict[str, bytes]:
    model_dir = root / "repo" / "pipeline-test-model"
    return {
        p.name: (p / "manifest.json").read_bytes()
        for p in sorted(model_dir.iterdir())
        if p.name.isdigit()
    }


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    config_file = root / "tiny.yaml"
    config_file.write_text(_TINY.format(root=root))
    result = run_pipeline(load_pipeline_config(config_file))
    return root, result


def test_a_tiny_pipeline_runs_every_stage_and_writes_a_report(first_run):
    _, result = first_run
    record = json.loads((result.run_dir / "run.json").read_text())
    assert record["status"] == "succeeded"
    assert [s["name"] for s in record["stages"]] == [
        "data",
        "train",
        "evaluate",
        "export",
        "serve",
        "predict",
        "accuracy",
        "bench",
    ]
    assert all(s["status"] == "done" for s in record["stages"])
    # The validation split sent as files through the real Triton, beside training's eager AP.
    accuracy = record["accuracy"]
    assert accuracy["images"] > 0 and accuracy["served_AP"] >= 0
    assert accuracy["ap_gap"] == pytest.approx(
        accuracy["eager_AP"] - accuracy["served_AP"], abs=0.01
    )
    assert "Served accuracy" in result.report_markdown.read_text()
    assert result.model_version == 1
    assert (result.version_dir / "model.onnx").is_file()
    markdown = result.report_markdown.read_text()
    for heading in (
        "## Training and evaluation",
        "## Export",
        "## Latency benchmark",
        "## Smoke prediction through Triton",
    ):
        assert heading in markdown
    html = result.report_html.read_text()
    assert "<script" not in html
    drawn = sorted((result.run_dir / "predictions").glob("*.png"))
    assert len(drawn) == 2
    assert all((result.run_dir / p["image"]).is_file() for p in record["smoke"]["predictions"])
    assert record["bench"]["results"][0]["count"] == 4
    assert (result.run_dir / "pipeline.log").read_text().count("stage bench: done") == 1
    # The seed's eager wrapper in the same run, and camera-sized JPEGs measured again.
    assert record["bench"]["baseline"]["protocol"] == "pytorch-eager"
    assert record["bench"]["ratios"]["grpc_encoded_p50_speedup_at_c1"] > 0
    (photos,) = record["bench"]["photo_sizes"]
    assert photos["size"] == "320x240" and photos["results"][0]["count"] == 2
    assert (result.run_dir / photos["plot"]).is_file()
    assert "## Latency benchmark, 320x240 photos" in markdown
    assert "| pytorch-eager | 1 |" in markdown


def test_the_config_used_is_saved_with_the_run_and_with_the_model_version(first_run):
    _, result = first_run
    saved = (result.run_dir / CONFIG_FILE_NAME).read_text()
    assert (result.version_dir / CONFIG_FILE_NAME).read_text() == saved
    assert "architecture: tiny" in saved
    body = "\n".join(line for line in saved.splitlines() if not line.startswith("#"))
    assert "token" not in body


def test_rerunning_the_saved_config_through_the_cli_adds_the_next_version(first_run, capsys):
    root, result = first_run
    before = _versions(root)
    status = main(["pipeline", "--config", str(result.run_dir / CONFIG_FILE_NAME), "--no-progress"])
    assert status == 0
    after = _versions(root)
    new = sorted(set(after) - set(before), key=int)
    assert new == [str(max(int(v) for v in before) + 1)]
    assert all(after[v] == before[v] for v in before)  # earlier versions untouched
    out = capsys.readouterr().out
    assert f"version {new[0]}" in out and "report:" in out and "detstack demo" in out


def test_a_failing_stage_stops_the_run_names_the_stage_and_keeps_existing_versions(first_run):
    root, _ = first_run
    before = _versions(root)
    broken = root / "broken-data"
    shutil.copytree(root / "data", broken)
    victim = next(p for p in sorted((broken / "images").iterdir()) if p.suffix == ".png")
    victim.unlink()
    config = load_pipeline_config(root / "tiny.yaml", {"dataset.source": str(broken)})
    with pytest.raises(PipelineError, match="stage 'data' failed") as caught:
        run_pipeline(config)
    assert victim.name in str(caught.value)
    assert "existing versions" in str(caught.value)
    assert _versions(root) == before
    run_dirs = sorted((root / "runs").iterdir())
    record = json.loads((run_dirs[-1] / "run.json").read_text())
    assert record["status"] == "failed" and record["failed_stage"] == "data"
    assert (run_dirs[-1] / "report.md").is_file()


def test_the_cli_exits_non_zero_with_the_stage_in_the_message(first_run, capsys):
    root, _ = first_run
    status = main(
        [
            "pipeline",
            "--config",
            str(root / "tiny.yaml"),
            "--dataset",
            str(root / "does-not-exist"),
            "--set",
            "dataset.synthesize=false",
        ]
    )
    assert status != 0
    assert "stage 'data' failed" in capsys.readouterr().err


def test_an_export_failure_stops_at_export_and_leaves_no_partial_version(first_run, monkeypatch):
    import export.exporter
    from detstack.errors import ExportValidationError

    root, _ = first_run
    before = _versions(root)
    model_dir = root / "repo" / "pipeline-test-model"
    entries_before = sorted(p.name for p in model_dir.iterdir())

    def failing_gate(*args, **kwargs):
        raise ExportValidationError("injected: boxes differ on image 0 (IoU 0.5 < 0.99)")

    monkeypatch.setattr(export.exporter, "validate_export", failing_gate)
    with pytest.raises(PipelineError, match="stage 'export' failed: injected") as caught:
        run_pipeline(load_pipeline_config(root / "tiny.yaml"))
    assert "no model version was written" in str(caught.value)
    assert _versions(root) == before
    assert sorted(p.name for p in model_dir.iterdir()) == entries_before


def test_keep_serving_keeps_triton_and_the_demo_up_until_ctrl_c(first_run):
    root, _ = first_run
    command = [
        sys.executable,
        "-m",
        "cli.main",
        "pipeline",
        "--config",
        str(root / "tiny.yaml"),
        "--keep-serving",
        "--demo-port",
        "0",
        "--no-progress",
        "--set",
        "bench.enabled=false",
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "DETSTACK_API_TOKEN": ""},
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C stops" in line:
                break
        output = "".join(lines)
        page = re.search(r"demo page:\s+(http://\S+)", output)
        assert page, output
        assert re.search(r"API token:\s+\S{16,}", output), output
        with urllib.request.urlopen(page.group(1) + "api/config", timeout=30) as response:
            config = json.loads(response.read())
        assert config["default_endpoint"].startswith("grpc://127.0.0.1:")
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, "".join(lines) + rest
    assert "stopping" in rest, "".join(lines) + rest
