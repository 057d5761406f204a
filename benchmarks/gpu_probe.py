"""GPU probe: one command that measures what torch can measure on a borrowed GPU, in one go.

An H200 machine comes now and then, for one command of at most 10 minutes; this script is
written and tested ahead (on CPU, ``--quick``) so that it runs the moment one is there. It
answers: how fast does AMP training go, what is the eager inference baseline that served
figures are compared against, does batching pay for a two-stage detector on this chip, do
``torch.compile`` and CUDA graphs work for it, and do the project's ``gpu`` tests pass.

Sections, in the order run (cheap and essential first; each gets a share of the time):

1. ``training``: images/s of SGD steps of ``fasterrcnn_resnet50_fpn`` (no downloaded weights:
   ``weights=None, weights_backbone=None``) on 800×1067 synthetic images, batch 2 and 8,
   FP32 / AMP FP16 (GradScaler) / AMP BF16.
2. ``inference``: p50/p90 latency per call and images/s of the same detector in eval mode at
   batch 1, 2, 4, 8: FP32, autocast FP16, autocast BF16, ``.half()``.
3. ``train_loop``: a short run of our own ``training.train`` with ``amp=True`` on a synthetic
   COCO dataset, ending in a checkpoint (read back) and a COCO evaluation (skipped, with the
   reason, where pycocotools is not installed; the H200 machine has none).
4. ``gpu_tests``: ``pytest -m gpu`` over the test files that carry the mark, in a subprocess.
5. ``cuda_graphs`` and ``compile``: CUDA-graph capture (backbone+FPN, then the whole
   detector) and ``torch.compile`` (backbone, then the whole detector), each in a child
   process with a timeout; each attempt gives figures or the exception that stopped it.

Budget: ``--time-limit`` seconds (default 540) count from the start of the process; every
section is checked against its deadline, stops cleanly and the JSON is rewritten atomically
after each section, so a run cut short still leaves everything measured until then. A watchdog
writes the file and exits 20 s after the limit if a step hangs.

Output: ``benchmarks/results/gpu/<device>.json`` (``nvidia-h200.json``; quick runs add
``-quick``: ``cpu-quick.json``) or ``--output PATH``, and a table on stdout. Conditions
(torch/torchvision/CUDA/cuDNN versions, device, capability, memory, driver, CPUs) are in the
JSON; the host name is not.

On the H200 machine (the device tool): carry nothing (the tracked tree is enough; torch,
torchvision, numpy and Pillow are that machine's own), ``timeout_s=600``, and write into
``$OUT``, the only folder that comes back (then copy ``$OUT/nvidia-h200.json`` to
``benchmarks/results/gpu/`` here and commit it):

    PYTHONPATH=. python benchmarks/gpu_probe.py --time-limit 540 --output-dir "$OUT"

The table it prints is also in the tool's ``output_tail``. 540 s leaves a minute of the 600
for start-up and the watchdog. A second, shorter try if the first failed early:
``--time-limit 300`` with ``timeout_s=360``. Handled where missing: pycocotools (COCO
evaluation skipped, with the reason; that machine has none), tqdm (a pass-through stand-in,
recorded under ``conditions.stand_ins``), pytest (gpu tests skipped, with the reason).

On CPU, the same code on the ``tiny`` model in well under a minute (what CI runs):

    $ .venv/bin/python benchmarks/gpu_probe.py --device cpu --quick --output /tmp/cpu.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _path in (str(REPO), str(HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from _gpu_probe_compiled import run_compile, run_cuda_graphs  # noqa: E402
from _gpu_probe_measure import (  # noqa: E402
    ProbeSettings,
    failure,
    full_settings,
    measure_inference,
    measure_training,
    quick_settings,
)
from _gpu_probe_runs import (  # noqa: E402
    conditions,
    ensure_tqdm,
    run_bounded,
    run_gpu_tests,
    run_train_loop,
)

from detstack.atomic import atomic_write_json  # noqa: E402


def _process_age_s() -> float:
    """Seconds since this process started (Linux), so the budget includes importing torch."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # starttime, after the name
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - started)
    except (OSError, ValueError, IndexError):
        return 0.0


_STARTED = time.monotonic() - _process_age_s()  # the budget counts from the process start

SCHEMA = "detstack.gpu_probe/1"
RESULTS = REPO / "benchmarks" / "results" / "gpu"
SECTIONS = ("training", "inference", "train_loop", "gpu_tests", "cuda_graphs", "compile")
#: Per section: (share cap in seconds, least seconds worth starting it with). The compile
#: attempts go last and get all that is left: compiling a big detector can take minutes.
_PLAN = {
    "training": (150.0, 20.0),
    "inference": (110.0, 15.0),
    "train_loop": (90.0, 20.0),
    "gpu_tests": (90.0, 15.0),
    "cuda_graphs": (60.0, 20.0),
    "compile": (float("inf"), 30.0),
}
_RESERVE_S = 8.0  # kept for writing the file and the table after the last section
_WATCHDOG_GRACE_S = 20.0
_WORKER_TIMEOUT_MARGIN_S = 10.0
logger = logging.getLogger("gpu_probe")


def slug(name: str) -> str:
    """``"NVIDIA H200"`` -> ``"nvidia-h200"``: a device name as a file name."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def write_json(path: Path, report: Any) -> None:
    """Write ``report`` to ``path`` atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, report, indent=1, default=str)


def section_from_records(records: list[dict[str, Any]]) -> dict[str, Any]:
    """A section's status from its records: ok, partial (some figures) or failed (none)."""
    good = [r for r in records if r.get("status") in ("ok", "partial")]
    if good and len(good) == len(records) and all(r["status"] == "ok" for r in good):
        status, reason = "ok", None
    elif good:
        status, reason = "partial", f"{len(records) - len(good)} of {len(records)} without figures"
    else:
        reasons = sorted({str(r.get("reason")) for r in records})
        skipped = bool(records) and all(r.get("status") == "skipped" for r in records)
        status = "skipped" if skipped else "failed"
        reason = "; ".join(reasons) or "no configuration ran"
    return {"status": status, "reason": reason, "results": records}


def _worker_section(
    worker: str, args: argparse.Namespace, deadline: float, work_dir: Path
) -> dict[str, Any]:
    """Run ``--worker`` in a child process; its records survive a timeout or a crash.

    CUDA graphs without CUDA are only "skipped" records: no child is started for them.
    """
    if worker == "cuda_graphs" and torch.device(args.device).type != "cuda":
        records: list[dict[str, Any]] = []
        run_cuda_graphs(args.settings, deadline, records.append)
        return section_from_records(records)
    output = work_dir / f"{worker}.json"
    time_limit = max(1.0, deadline - time.monotonic() - _WORKER_TIMEOUT_MARGIN_S)
    command = [
        sys.executable, str(Path(__file__).resolve()), "--worker", worker,
        "--output", str(output), "--device", args.device, "--time-limit", f"{time_limit:.0f}",
    ]  # fmt: skip
    if args.quick:
        command.append("--quick")
    if args.compile_backend:
        command += ["--compile-backend", args.compile_backend]
    timeout = max(5.0, deadline - time.monotonic())
    returncode, stdout, stderr = run_bounded(command, timeout)
    reason = None
    if returncode is None:
        reason = f"child timed out after {timeout:.0f} s"
    elif returncode != 0:
        tail = (stderr or stdout).strip().splitlines()[-1:] or ["no output"]
        reason = f"child exit {returncode}: {tail[0][:300]}"
    records = json.loads(output.read_text()) if output.is_file() else []
    running = [r for r in records if r.get("status") == "running"]
    for record in running:
        record.update(status="failed", reason=reason or "child stopped during this attempt")
    if not records:
        return {"status": "failed", "reason": reason or "the child wrote no records"}
    section = section_from_records(records)
    if reason and not running:
        section["child"] = reason
    return section


def _run_worker(args: argparse.Namespace, settings: ProbeSettings) -> int:
    """Child mode: run one attempt family, rewriting ``--output`` after every record."""
    deadline = _STARTED + args.time_limit
    records: list[dict[str, Any]] = []
    output = Path(args.output)

    def on_record(record: dict[str, Any]) -> None:
        if records and records[-1].get("status") == "running":
            records.pop()  # the final record of the attempt that was running
        records.append(record)
        write_json(output, records)

    run = run_cuda_graphs if args.worker == "cuda_graphs" else run_compile
    run(settings, deadline, on_record)
    return 0


class Probe:
    """One probe run: the report, the budget, and the file rewritten after each section."""

    def __init__(self, args: argparse.Namespace, settings: ProbeSettings, output: Path) -> None:
        self.args, self.settings, self.output = args, settings, output
        self.limit_at = _STARTED + args.time_limit
        self.lock = threading.Lock()
        self.current: str | None = None
        self.report: dict[str, Any] = {
            "schema": SCHEMA,
            "status": "running",
            "started_utc": _utc_now(),
            "time_limit_s": args.time_limit,
            "quick": settings.quick,
            "command": " ".join(["python", "benchmarks/gpu_probe.py", *sys.argv[1:]]),
            "settings": {
                k: list(v) if isinstance(v, tuple) else v for k, v in vars(settings).items()
            },
            "sections": {
                name: {"status": "pending", "reason": "not reached (the run stopped before it)"}
                for name in SECTIONS
            },
        }

    def save(self) -> None:
        with self.lock:
            self.report["elapsed_s"] = round(time.monotonic() - _STARTED, 1)
            write_json(self.output, self.report)

    def run_section(self, name: str, function: Callable[[float], dict[str, Any]]) -> None:
        cap, least = _PLAN[name]
        left = max(0.0, self.limit_at - _RESERVE_S - time.monotonic())
        if left < least:
            section = {
                "status": "skipped",
                "reason": f"time limit: {left:.0f} s left, needs {least:.0f}",
            }
        else:
            self.current = name
            started = time.monotonic()
            try:
                section = function(started + min(cap, left))
            except Exception as error:
                logger.exception("section %s failed", name)
                section = {"status": "failed", "reason": failure(error)}
            section["seconds"] = round(time.monotonic() - started, 1)
            self.current = None
        with self.lock:
            self.report["sections"][name] = section
        self.save()

    def watchdog(self) -> None:
        """Called past the limit if a section still runs: write what there is, exit 3."""
        with self.lock:
            if self.current is not None:
                self.report["sections"][self.current] = {
                    "status": "failed",
                    "reason": f"still running {_WATCHDOG_GRACE_S:.0f} s past the time limit",
                }
            self.report["status"] = "aborted: hard time limit"
        self.save()
        os._exit(3)


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_probe(args: argparse.Namespace, settings: ProbeSettings, output: Path) -> dict[str, Any]:
    """Every section in order, within the budget; returns the report written to ``output``."""
    probe = Probe(args, settings, output)
    timer = threading.Timer(probe.limit_at - time.monotonic() + _WATCHDOG_GRACE_S, probe.watchdog)
    timer.daemon = True
    timer.start()
    with tempfile.TemporaryDirectory(prefix="gpu-probe-") as temporary:
        work = Path(temporary)
        stand_in = ensure_tqdm(work)
        stand_ins = {"tqdm": "not installed: pass-through stand-in (no bars)"} if stand_in else {}
        probe.report["conditions"] = conditions(settings.device, stand_ins)
        probe.save()
        extra_path = [str(stand_in)] if stand_in else []
        probe.run_section("training", lambda d: section_from_records(measure_training(settings, d)))
        probe.run_section(
            "inference", lambda d: section_from_records(measure_inference(settings, d))
        )
        probe.run_section("train_loop", lambda d: run_train_loop(settings, d, work / "loop"))
        probe.run_section("gpu_tests", lambda d: run_gpu_tests(REPO, d, work, extra_path))
        probe.run_section("cuda_graphs", lambda d: _worker_section("cuda_graphs", args, d, work))
        probe.run_section("compile", lambda d: _worker_section("compile", args, d, work))
    timer.cancel()
    sections = probe.report["sections"]
    complete = all(s["status"] != "pending" for s in sections.values())
    complete = complete and not any("time limit" in str(s.get("reason")) for s in sections.values())
    probe.report["status"] = "complete" if complete else "partial: time limit"
    probe.report["finished_utc"] = _utc_now()
    probe.save()
    return probe.report


def _cell(record: dict[str, Any], key: str) -> str:
    value = record.get(key)
    return "-" if value is None else str(value)


def _table(records: list[dict[str, Any]], keys: tuple[str, ...]) -> list[str]:
    """Aligned rows of ``keys``; a record without figures shows its status, its reason below."""
    rows, notes = [keys], {}
    for record in records:
        if record.get("status") in ("ok", "partial"):
            rows.append(tuple(_cell(record, k) for k in keys))
            continue
        rows.append((_cell(record, keys[0]), _cell(record, keys[1]), str(record.get("status"))))
        rows[-1] += ("",) * (len(keys) - 3)
        label = f"{_cell(record, keys[0])} {_cell(record, keys[1])}"
        notes.setdefault(f"{record.get('status')}: {record.get('reason')}", []).append(label)
    widths = [max(len(row[i]) for row in rows) for i in range(len(keys))]
    lines = ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines += [f"    {', '.join(labels)}: {why}" for why, labels in notes.items()]
    return [line.rstrip() for line in lines]


def format_table(report: dict[str, Any]) -> str:
    """The report as plain-text tables, one per section (figures or the reason)."""
    device = report.get("conditions", {}).get("device", {}).get("name", "?")
    lines = [f"GPU probe on {device}: {report['status']} in {report.get('elapsed_s')} s"]
    columns = {
        "training": ("batch", "precision", "images_per_s", "ms_p50", "ms_p90", "peak_memory_mib"),
        "inference": ("batch", "precision", "ms_p50", "ms_p90", "images_per_s", "peak_memory_mib"),
        "cuda_graphs": ("attempt", "batch", "ms_p50", "ms_p90", "speedup_vs_eager"),
        "compile": ("attempt", "batch", "backend", "compile_s", "ms_p50", "ms_p90"),
    }
    for name, section in report["sections"].items():
        lines.append("")
        head = f"[{name}] {section['status']}"
        if section.get("reason"):
            head += f": {section['reason']}"
        lines.append(head)
        if name in columns and section.get("results"):
            lines += _table(section["results"], columns[name])
        elif name == "train_loop" and section["status"] == "ok":
            lines.append(
                f"  amp={section['amp']} {len(section['epochs'])} epoch(s) in "
                f"{section['seconds']} s, checkpoint epoch {section['checkpoint']['epoch']}, "
                f"COCO eval: {section['coco_eval']}"
            )
        elif name == "gpu_tests" and section.get("summary"):
            lines.append(f"  {section['summary']}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (cuda if there is one), cpu, cuda")
    parser.add_argument("--quick", action="store_true", help="tiny model, a few steps (CI)")
    parser.add_argument("--time-limit", type=float, default=540.0, help="seconds for everything")
    parser.add_argument("--output", default=None, help="JSON path (overrides --output-dir)")
    parser.add_argument(
        "--output-dir",
        default=str(RESULTS),
        help="folder for <device>.json (default: benchmarks/results/gpu; on the device "
        'machine: "$OUT", the folder that comes back)',
    )
    parser.add_argument(
        "--compile-backend",
        default=None,
        help="torch.compile backend (default: inductor; eager with --quick)",
    )
    parser.add_argument("--worker", choices=("cuda_graphs", "compile"), help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.time_limit <= 0:
        parser.error(f"--time-limit must be positive, got {args.time_limit}")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")
    make = quick_settings if args.quick else full_settings
    settings = make(args.device, args.compile_backend)
    args.settings = settings
    if settings.quick and settings.device == "cpu":
        # The quick run checks code paths; one thread keeps a shared CI machine from
        # oversubscription (two OpenMP threads on two busy cores ran 10x slower).
        torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.worker:
        if not args.output:
            parser.error("--worker needs --output")
        return _run_worker(args, settings)
    if args.output:
        output = Path(args.output)
    else:
        name = torch.cuda.get_device_name(args.device) if settings.device != "cpu" else "cpu"
        output = Path(args.output_dir) / f"{slug(name)}{'-quick' if args.quick else ''}.json"
    report = run_probe(args, settings, output)
    print(format_table(report))
    print(f"\nwritten: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
