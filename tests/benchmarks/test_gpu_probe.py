"""The GPU probe (benchmarks/gpu_probe.py) run the way CI runs it: CPU, ``--quick``, tiny model.

The probe is written for a borrowed H200 that comes for ten minutes at a time; these tests make
sure that when it comes, the one command works: every section gives figures or says why not,
the JSON keeps its shape, and a time limit stops it cleanly with what it has.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROBE = REPO / "benchmarks" / "gpu_probe.py"
SECTIONS = ("training", "inference", "train_loop", "gpu_tests", "cuda_graphs", "compile")
FIGURES = ("images_per_s", "ms_p50")


@pytest.fixture
def probe_modules(monkeypatch):
    """The probe's modules, importable for the duration of one test."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import gpu_probe

    return gpu_probe


def _run_probe(tmp_path: Path, *options: str, timeout: float = 240) -> tuple[dict, str, float]:
    output = tmp_path / "cpu.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            str(PROBE),
            "--device",
            "cpu",
            "--quick",
            "--output",
            str(output),
            *options,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(output.read_text()), done.stdout, seconds


def _has_figures(record: dict) -> bool:
    return any(isinstance(record.get(key), (int, float)) for key in FIGURES)


def _assert_figures_or_reasons(section_name: str, section: dict) -> None:
    status = section["status"]
    assert status in ("ok", "partial", "failed", "skipped"), (section_name, status)
    if status in ("failed", "skipped"):
        assert isinstance(section.get("reason"), str) and section["reason"], section_name
    for record in section.get("results", []):
        if record["status"] in ("ok", "partial"):
            assert _has_figures(record), (section_name, record)
        else:
            assert isinstance(record.get("reason"), str) and record["reason"], (
                section_name,
                record,
            )


@pytest.mark.slow
def test_quick_cpu_probe_writes_every_section_with_figures_or_a_reason(tmp_path):
    report, stdout, seconds = _run_probe(tmp_path)

    assert report["schema"] == "detstack.gpu_probe/1"
    assert report["status"] == "complete"
    assert report["quick"] is True and report["settings"]["architecture"] == "tiny"
    assert set(report["sections"]) == set(SECTIONS)
    for name, section in report["sections"].items():
        _assert_figures_or_reasons(name, section)
    assert seconds < 120, f"the quick probe took {seconds:.0f} s"

    conditions = report["conditions"]
    for key in ("torch", "torchvision", "cuda_runtime", "cudnn", "cpu_count", "python"):
        assert key in conditions
    assert conditions["device"]["name"] == "cpu"
    hostname = socket.gethostname()
    if len(hostname) >= 6:  # a short name could occur in the JSON by chance
        assert hostname not in json.dumps(report)

    training = {(r["batch"], r["precision"]): r for r in report["sections"]["training"]["results"]}
    fp32 = training[(2, "fp32")]
    assert fp32["status"] == "ok" and fp32["images_per_s"] > 0
    assert fp32["iterations"] == report["settings"]["train_steps"]
    inference = report["sections"]["inference"]["results"]
    first = next(r for r in inference if r["precision"] == "fp32" and r["batch"] == 1)
    assert first["status"] == "ok" and first["ms_p90"] >= first["ms_p50"] > 0

    loop = report["sections"]["train_loop"]
    assert loop["status"] == "ok" and loop["checkpoint"]["epoch"] == 1
    assert loop["coco_eval"] in ("ok", "skipped: pycocotools not installed")
    tests = report["sections"]["gpu_tests"]
    assert tests["status"] == "ok" and tests["totals"]["tests"] >= 1
    assert all(r["status"] == "skipped" for r in report["sections"]["cuda_graphs"]["results"])
    assert any(_has_figures(r) for r in report["sections"]["compile"]["results"])

    for name in SECTIONS:
        assert f"[{name}]" in stdout


@pytest.mark.slow
def test_probe_stops_at_its_time_limit_and_still_writes_every_section(tmp_path):
    report, stdout, seconds = _run_probe(tmp_path, "--time-limit", "1", timeout=120)
    assert seconds < 60, f"a 1 s budget took {seconds:.0f} s"

    assert report["status"] == "partial: time limit"
    assert "conditions" in report
    for name, section in report["sections"].items():
        assert section["status"] == "skipped", name
        assert "time limit" in section["reason"]
    assert "[training] skipped" in stdout


def test_device_names_become_file_names(probe_modules):
    assert probe_modules.slug("NVIDIA H200") == "nvidia-h200"
    assert probe_modules.slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert probe_modules.slug("cpu") == "cpu"


def test_timing_excludes_warmup_and_stops_at_the_deadline(probe_modules):
    from _gpu_probe_measure import ProbeDevice, time_iterations

    calls = []
    device = ProbeDevice("cpu")
    times = time_iterations(lambda: calls.append(1), device, 2, 5, time.monotonic() + 60)
    assert len(times) == 5 and len(calls) == 7
    calls.clear()
    assert time_iterations(lambda: calls.append(1), device, 2, 5, time.monotonic() - 1) == []
    assert calls == []


def test_section_status_says_ok_partial_failed_or_skipped(probe_modules):
    section = probe_modules.section_from_records
    ok = {"status": "ok", "ms_p50": 1.0}
    failed = {"status": "failed", "reason": "RuntimeError: boom"}
    skipped = {"status": "skipped", "reason": "needs a CUDA device"}
    assert section([ok, ok])["status"] == "ok"
    assert section([ok, failed])["status"] == "partial"
    assert section([failed, skipped]) == {
        "status": "failed",
        "reason": "RuntimeError: boom; needs a CUDA device",
        "results": [failed, skipped],
    }
    assert section([skipped])["status"] == "skipped"


def test_json_is_replaced_whole_and_leaves_no_temporary_file(probe_modules, tmp_path):
    path = tmp_path / "gpu" / "x.json"
    probe_modules.write_json(path, {"a": 1})
    probe_modules.write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]


def test_failure_keeps_the_first_error_of_a_double_fault(probe_modules):
    from _gpu_probe_measure import failure

    try:
        try:
            raise RuntimeError("operation not permitted when stream is capturing")
        except RuntimeError:
            raise RuntimeError("capture invalidated") from None
    except RuntimeError as error:
        assert failure(error) == "RuntimeError: capture invalidated"
    try:
        try:
            raise RuntimeError("operation not permitted when stream is capturing")
        except RuntimeError:
            raise RuntimeError("capture invalidated")  # noqa: B904 - the case under test
    except RuntimeError as error:
        text = failure(error)
        assert text.startswith("RuntimeError: capture invalidated")
        assert "stream is capturing" in text
