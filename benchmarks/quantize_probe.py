"""Measure INT8 quantization plans of a checkpoint's graph: COCO AP and onnxruntime CPU latency.

Exports the checkpoint to ONNX (FP32, as ``detstack export`` does), quantizes it with each
plan (static QDQ, per-channel weights, calibrated on training-split images), then scores every
graph on the validation split of the checkpoint's own training run (COCOeval) and times it on
onnxruntime's CPU provider. This is how :data:`export.quantize.DEFAULT_PLAN` was chosen.

Example:
    $ .venv/bin/python benchmarks/quantize_probe.py runs/qs/best.pt --calibration-images 32 \\
          --out benchmarks/results/quantize_probe_quickstart.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

#: The plans compared: name -> (operator types, node-name patterns kept float).
_BOX_HEAD = ("/detector/roi_heads/box_head/*",)
_RPN_CONV = ("/detector/rpn/head/conv/*",)


def _plans() -> dict[str, Any]:
    from onnxruntime.quantization.registry import QDQRegistry

    from export.quantize import FLOAT_HEADS, QuantizationPlan

    every = tuple(sorted(QDQRegistry))
    return {
        "int8_every_op": QuantizationPlan(op_types=every, keep_float=()),
        "int8_conv_gemm_relu": QuantizationPlan(keep_float=()),
        "int8_default": QuantizationPlan(),
        "int8_backbone_fpn": QuantizationPlan(keep_float=FLOAT_HEADS + _BOX_HEAD + _RPN_CONV),
        "int8_default_per_tensor": QuantizationPlan(per_channel=False),
    }


def _latencies(
    paths: dict[str, Path], images: list[Any], threads: int, repeats: int
) -> dict[str, dict[str, float]]:
    """Per-image latency of every graph, interleaved (graph after graph on each image), so
    that the load of a shared machine drifts over all of them alike."""
    from export.accuracy_gate import _session

    sessions = {name: _session(path, threads) for name, path in paths.items()}
    for session in sessions.values():
        session.run(None, {"image": images[0]})  # warm-up
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(repeats):
        for image in images:
            for name, session in sessions.items():
                start = time.perf_counter()
                session.run(None, {"image": image})
                times[name].append(1000.0 * (time.perf_counter() - start))
    return {
        name: {
            "median_ms": round(statistics.median(values), 2),
            "mean_ms": round(statistics.fmean(values), 2),
            "runs": len(values),
        }
        for name, values in times.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--dataset", default=None, help="override the checkpoint's dataset path")
    parser.add_argument("--calibration-images", type=int, default=32)
    parser.add_argument("--eval-images", type=int, default=None, help="cap validation images")
    parser.add_argument("--latency-images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--plans", nargs="*", default=None, help="subset of plan names")
    parser.add_argument("--keep", type=Path, default=None, help="keep graphs in this folder")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    import onnxruntime
    import torch

    from export.accuracy_gate import calibration_images, evaluate_graph, training_split
    from export.adapter import adapter_from_checkpoint
    from export.onnx_export import export_onnx
    from export.quantize import quantize_int8
    from training.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(args.checkpoint)
    split = training_split(checkpoint, args.dataset)
    ids = list(split.val_ids)
    if args.eval_images:
        ids = ids[: args.eval_images]
    calibration = calibration_images(split, args.calibration_images)
    from detstack.images import to_chw

    timing_images = [to_chw(split.dataset.read_image(i)) for i in ids[: args.latency_images]]
    plans = _plans()
    chosen = args.plans or list(plans)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="quantize-probe-") as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        fp32 = folder / "fp32.onnx"
        adapter = adapter_from_checkpoint(checkpoint)
        export_onnx(adapter, fp32, example=torch.from_numpy(timing_images[0]))
        graphs = {"fp32": (fp32, None)}
        for name in chosen:
            path = folder / f"{name}.onnx"
            start = time.perf_counter()
            record = quantize_int8(fp32, path, calibration, plans[name])
            graphs[name] = (path, {**record.to_dict(), "seconds": time.perf_counter() - start})
        latencies = _latencies(
            {name: path for name, (path, _) in graphs.items()},
            timing_images,
            args.threads,
            args.repeats,
        )
        for name, (path, record) in graphs.items():
            score = evaluate_graph(path, split.dataset, ids, threads=args.threads)
            latency = latencies[name]
            results[name] = {
                "score": score.to_dict(),
                "latency": latency,
                "size_bytes": path.stat().st_size,
                "quantization": record,
            }
            logging.info("%s: AP %.2f, %s", name, score.ap_points, latency)
    reference = results["fp32"]
    for entry in results.values():
        entry["ap_drop"] = round(reference["score"]["AP"] - entry["score"]["AP"], 3)
        entry["speedup_vs_fp32"] = round(
            reference["latency"]["median_ms"] / entry["latency"]["median_ms"], 3
        )
    report = {
        "checkpoint": str(args.checkpoint),
        "architecture": checkpoint.model_config.architecture,
        "conditions": {
            "onnxruntime": onnxruntime.__version__,
            "provider": "CPUExecutionProvider",
            "intra_op_threads": args.threads,
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "dataset": split.source,
            "val_images": len(ids),
            "calibration_images": len(calibration),
            "latency_images": len(timing_images),
            "latency_image_sizes": sorted({f"{i.shape[2]}x{i.shape[1]}" for i in timing_images}),
            "note": "machine shared with other engineers; ratios within one run",
        },
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for name, entry in results.items():
        print(
            f"{name:26s} AP {entry['score']['AP']:6.2f}  drop {entry['ap_drop']:6.2f}  "
            f"{entry['latency']['median_ms']:8.2f} ms  x{entry['speedup_vs_fp32']:.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
