"""The photo benchmarks run end to end on the tiny model and write what their readers expect."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.fixtures.models import tiny_shape_image

REPO = Path(__file__).resolve().parents[2]


def write_photos(folder: Path) -> Path:
    """One JPEG and one PNG of rectangles, of different sizes."""
    folder.mkdir()
    rng = np.random.default_rng(2)
    Image.fromarray(tiny_shape_image(rng, 96)[0]).save(folder / "a.jpg", quality=92)
    Image.fromarray(tiny_shape_image(rng, 130)[0]).save(folder / "b.png")
    return folder


def run_script(name: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / name), *arguments],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.slow
def test_late_normalise_benchmark_times_both_graphs_and_finds_the_same_detections(
    tiny_checkpoint, tmp_path
):
    out = tmp_path / "late.json"
    photos = write_photos(tmp_path / "photos")
    done = run_script(
        "late_normalise.py",
        *("--checkpoint", str(tiny_checkpoint), "--photos", str(photos)),
        *("--rounds", "2", "--out", str(out)),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    document = json.loads(out.read_text())
    assert set(document["photos"]) == {"a.jpg", "b.png"}
    for row in document["photos"].values():
        assert row["graph_ms"]["early"] > 0 and row["graph_ms"]["late"] > 0
        assert row["same_detection_count"] and row["labels_equal"]
        assert row["max_box_difference_px"] < 0.05
    assert document["median_early_over_late"] > 0


@pytest.mark.slow
@pytest.mark.triton
def test_side_by_side_benchmark_serves_each_variant_and_reports_ratios_per_photo(
    tiny_checkpoint, tmp_path
):
    out = tmp_path / "out"
    photos = write_photos(tmp_path / "photos")
    done = run_script(
        "photos_side_by_side.py",
        *("--checkpoint", str(tiny_checkpoint), "--photos", str(photos)),
        *("--variants", "fp32", "fp32-before", "--order", "block", "--block", "2"),
        *("--rounds", "2", "--out", str(out)),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    document = json.loads((out / "photos_side_by_side.json").read_text())
    assert (out / "photos_side_by_side.png").stat().st_size > 1000
    assert document["conditions"]["order"] == "block"
    assert set(document["median_eager_over_served"]) == {"fp32", "fp32-before"}
    for row in document["photos"].values():
        assert set(row["p50_ms"]) == {"eager", "fp32", "fp32-before"}
        assert all(value > 0 for value in row["p50_ms"].values())
        assert set(row["eager_over_served"]) == {"fp32", "fp32-before"}
    assert "median eager/served, fp32:" in done.stdout


def test_side_by_side_benchmark_refuses_int8_without_the_training_dataset(tmp_path):
    done = run_script(
        "photos_side_by_side.py",
        *("--checkpoint", "x.pt", "--photos", str(tmp_path), "--variants", "int8"),
        *("--out", str(tmp_path / "out")),
    )
    assert done.returncode == 2
    assert "--variants int8 needs --dataset" in done.stderr
