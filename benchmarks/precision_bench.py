"""FP32 against INT8 against the seed's eager wrapper, in one run, on one checkpoint.

Exports the checkpoint twice into a scratch repository, as ``detstack export`` does: FP32
(``<name>``, parity gate) and INT8 (``<name>-int8``, calibrated on the training split, accuracy
gate on the validation split: its COCO AP figures are the INT8 export's own). Then it times,
image after image and interleaved (so the load of a shared machine drifts over all three
alike):

* ``pytorch-eager``: the seed's ``ModelWrapper.predict`` (:class:`bench.EagerBaseline`:
  base64 text -> PIL -> ``ToTensor`` -> the detector -> base64 outputs);
* ``onnx-fp32`` / ``onnx-int8``: the same base64 text -> :func:`detstack.images.decode_image`
  -> the exported graph on onnxruntime's CPU provider, in process (the issue measured Triton's
  embedded server within 2 % of in-process onnxruntime).

Example:
    $ .venv/bin/python benchmarks/precision_bench.py runs/qs/best.pt --images photos/ \\
          --requests 24 --out benchmarks/results/quantize/precision_quickstart_fused.json
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def _cells(paths: list[Path], limit: int) -> list[tuple[str, str]]:
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])
    files = [f for f in files if f.suffix.lower() in (".jpg", ".jpeg", ".png")][:limit]
    return [(f.name, base64.b64encode(f.read_bytes()).decode("ascii")) for f in files]


def _onnx_runner(path: Path, threads: int) -> Any:
    import onnxruntime

    from detstack.images import decode_image, to_chw

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    # Interleaved with eager PyTorch: spinning onnxruntime threads would steal its cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(
        str(path), sess_options=options, providers=["CPUExecutionProvider"]
    )

    def run(cell: str) -> None:
        pixels = to_chw(decode_image(base64.b64decode(cell)))
        session.run(None, {"image": pixels})

    return run


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": round(statistics.median(ordered), 1),
        "p90_ms": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 1),
        "mean_ms": round(statistics.fmean(ordered), 1),
        "requests": len(ordered),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--images", type=Path, nargs="+", required=True)
    parser.add_argument("--max-images", type=int, default=8)
    parser.add_argument("--requests", type=int, default=16, help="timed requests per runtime")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calibration-images", type=int, default=32)
    parser.add_argument("--accuracy-images", type=int, default=None)
    parser.add_argument("--max-ap-drop", type=float, default=1.0)
    parser.add_argument("--name", default="bench-model")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import onnxruntime
    import torch

    from bench import EagerBaseline
    from export import ExportConfig, export_checkpoint

    torch.set_num_threads(args.threads)
    load_at_start = list(os.getloadavg())
    cells = _cells(args.images, args.max_images)
    if not cells:
        parser.error(f"no .jpg/.png image under {args.images}")
    with tempfile.TemporaryDirectory(prefix="detstack-precision-") as scratch:
        repository = Path(scratch) / "repository"
        started = time.perf_counter()
        fp32 = export_checkpoint(
            args.checkpoint, ExportConfig(repository=repository, name=args.name)
        )
        fp32_s = time.perf_counter() - started
        started = time.perf_counter()
        int8 = export_checkpoint(
            args.checkpoint,
            ExportConfig(
                repository=repository,
                name=f"{args.name}-int8",
                precision="int8",
                calibration_images=args.calibration_images,
                accuracy_images=args.accuracy_images,
                max_ap_drop=args.max_ap_drop,
            ),
        )
        int8_s = time.perf_counter() - started
        runners = {
            "pytorch-eager": EagerBaseline(args.checkpoint, args.threads),
            "onnx-fp32": _onnx_runner(fp32.onnx_path, args.threads),
            "onnx-int8": _onnx_runner(int8.onnx_path, args.threads),
        }
        for _, cell in cells[: args.warmup]:
            for run in runners.values():
                run(cell)
        times: dict[str, list[float]] = {name: [] for name in runners}
        per_image: dict[str, dict[str, list[float]]] = {name: {} for name, _ in cells}
        load_before_timing = list(os.getloadavg())
        for index in range(args.requests):
            image, cell = cells[index % len(cells)]
            for name, run in runners.items():
                start = time.perf_counter()
                run(cell)
                times[name].append(1000.0 * (time.perf_counter() - start))
                per_image[image].setdefault(name, []).append(times[name][-1])
        sizes = {
            "fp32": fp32.onnx_path.stat().st_size,
            "int8": int8.onnx_path.stat().st_size,
        }
    latency = {name: _summary(values) for name, values in times.items()}
    by_image = {
        image: {name: round(statistics.median(v), 1) for name, v in runs.items()}
        for image, runs in per_image.items()
        if runs
    }
    eager, onnx32, onnx8 = (latency[n]["p50_ms"] for n in runners)
    report = {
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": str(args.checkpoint),
        "architecture": fp32.manifest["provenance"]["model_config"]["architecture"],
        "conditions": {
            "host_cpus": os.cpu_count(),
            "cpu": platform.processor() or platform.machine(),
            "load_average": list(os.getloadavg()),
            "load_average_at_start": load_at_start,
            "load_average_before_timing": load_before_timing,
            "threads": args.threads,
            "onnxruntime": onnxruntime.__version__,
            "torch": torch.__version__,
            "images": [name for name, _ in cells],
            "requests_per_runtime": args.requests,
            "interleaved": True,
            "onnxruntime_spinning": False,
            "onnx_runtime": "in-process onnxruntime CPUExecutionProvider (decode included)",
            "eager": "bench.EagerBaseline (the seed's ModelWrapper.predict)",
        },
        "latency": latency,
        "ratios_p50": {
            "int8_vs_eager": round(eager / onnx8, 3),
            "int8_vs_fp32": round(onnx32 / onnx8, 3),
            "fp32_vs_eager": round(eager / onnx32, 3),
        },
        "p50_ms_by_image": by_image,
        "accuracy_gate": int8.manifest["validation"]["precision"],
        "int8_kernels": int8.manifest["validation"]["precision"]["quantization"].get(
            "onnxruntime_kernels", {}
        ),
        "export_seconds": {"fp32": round(fp32_s, 1), "int8": round(int8_s, 1)},
        "onnx_bytes": sizes,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({"latency": latency, "ratios_p50": report["ratios_p50"]}, indent=2))
    gate = report["accuracy_gate"]
    print(f"AP fp32 {gate['fp32']['AP']} int8 {gate['int8']['AP']} drop {gate['ap_drop']}")
    print(f"INT8 kernels (onnxruntime's optimised graph): {report['int8_kernels']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
