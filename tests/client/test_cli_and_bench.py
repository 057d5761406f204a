"""``detstack predict`` and ``detstack bench`` end to end against a real Triton server."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from bench import BASELINE, BenchConfig, format_table, run_benchmark
from cli.main import main
from tests.fixtures.triton import TRITON_TEST_TOKEN

pytestmark = [pytest.mark.triton, pytest.mark.slow]


@pytest.fixture
def image_folder(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index, (width, height) in enumerate([(96, 64), (64, 80), (72, 72)]):
        pixels = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
        pixels[10:40, 10:40] = (250, 20, 20)
        fmt, suffix = ("JPEG", "jpg") if index % 2 == 0 else ("PNG", "png")
        Image.fromarray(pixels).save(folder / f"image{index}.{suffix}", format=fmt)
    return folder


def test_predict_command_writes_annotated_images_and_a_json_with_category_names(
    triton_server_with_token, image_folder, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("DETSTACK_API_TOKEN", TRITON_TEST_TOKEN)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    out = tmp_path / "out"
    images = sorted(image_folder.iterdir())
    status = main(
        [
            "predict",
            *map(str, images),
            str(broken),
            "--url",
            triton_server_with_token.endpoints.http,
            "--protocol",
            "http",
            "--threshold",
            "0.0",
            "--out",
            str(out),
        ]
    )
    assert status == 1, "one image failed, so the command must say so"
    document = json.loads((out / "detections.json").read_text())
    entries = {entry["image"]: entry for entry in document["images"]}
    assert "error" in entries[str(broken)] and str(broken) in entries[str(broken)]["error"]
    for path in images:
        entry = entries[str(path)]
        assert "error" not in entry
        drawn = Image.open(entry["output"])
        assert drawn.size == (entry["width"], entry["height"]) == Image.open(path).size
        for detection in entry["detections"]:
            assert detection["name"] and len(detection["box"]) == 4
    assert TRITON_TEST_TOKEN not in capsys.readouterr().out


def test_predict_command_fails_cleanly_when_the_token_is_missing(
    triton_server_with_token, image_folder, tmp_path, monkeypatch, capsys
):
    monkeypatch.delenv("DETSTACK_API_TOKEN", raising=False)
    status = main(
        [
            "predict",
            str(next(image_folder.iterdir())),
            "--url",
            triton_server_with_token.endpoints.grpc,
            "--out",
            str(tmp_path / "o"),
            "--timeout",
            "10",
        ]
    )
    assert status == 1
    assert "token" in capsys.readouterr().err


def test_bench_command_measures_both_transports_and_the_eager_baseline(
    triton_server, tiny_checkpoint, image_folder, tmp_path, capsys
):
    out = tmp_path / "bench"
    status = main(
        [
            "bench",
            str(image_folder),
            "--grpc-url",
            triton_server.endpoints.grpc,
            "--http-url",
            triton_server.endpoints.http,
            "--concurrency",
            "1",
            "2",
            "--requests",
            "6",
            "--warmup",
            "1",
            "--checkpoint",
            str(tiny_checkpoint),
            "--torch-threads",
            "1",
            "--out",
            str(out),
        ]
    )
    assert status == 0
    table = capsys.readouterr().out
    assert "p99 ms" in table and "pytorch-eager" in table
    report = json.loads((out / "bench.json").read_text())
    measured = {(r["protocol"], r["wire"], r["concurrency"]) for r in report["results"]}
    assert measured == {
        (protocol, wire, level)
        for protocol in ("grpc", "http")
        for wire in ("encoded", "pixels")
        for level in (1, 2)
    }
    files = [p.stat().st_size for p in image_folder.iterdir()]
    for result in report["results"]:
        if result["wire"] == "encoded":  # the file and 4 bytes of framing, nothing more
            assert result["bytes_per_request"] <= 1.05 * max(files)
        assert result["client_cpu_ms"] is not None and result["client_cpu_ms"] > 0
        assert result["count"] == 6 and result["failures"] == 0
        assert 0 < result["p50_ms"] <= result["p90_ms"] <= result["p99_ms"] <= result["max_ms"]
        assert result["throughput"] > 0
        assert result["server_compute_ms"] is not None and result["server_compute_ms"] > 0
        assert result["server_queue_ms"] is not None
    assert report["baseline"]["protocol"] == BASELINE and report["baseline"]["count"] == 6
    assert set(report["ratios"]) >= {
        "grpc_encoded_p50_speedup_at_c1",
        "http_pixels_best_throughput_ratio",
        "grpc_pixels_over_encoded_bytes",
    }
    with (out / "bench.csv").open() as stream:
        assert len(list(csv.DictReader(stream))) == 9
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_stops_a_level_at_the_time_cap_and_says_so(triton_server, image_folder):
    config = BenchConfig(
        images=(image_folder,),
        grpc_url=triton_server.endpoints.grpc,
        protocols=("grpc",),
        wires=("encoded",),
        concurrency=(1,),
        requests=100_000,
        warmup=0,
        max_seconds=0.5,
    )
    report = run_benchmark(config)
    (result,) = report.results
    assert result.capped
    assert 0 < result.count < 100_000
    assert report.baseline is None
    assert "time cap" in format_table(report)


def test_bench_refuses_a_folder_without_usable_images(tmp_path):
    from detstack.errors import ConfigError

    (tmp_path / "notes.txt").write_text("no images here")
    (tmp_path / "fake.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ConfigError, match="no usable image"):
        run_benchmark(BenchConfig(images=(tmp_path,)))
