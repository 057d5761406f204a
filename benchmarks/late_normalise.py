"""The exported graph with normalisation after the resize against the one normalising before.

:mod:`export._late_normalise` moves the float scaling and normalisation behind the detector's
resize while tracing. This script exports one checkpoint both ways, runs both graphs in
onnxruntime on the same photos (alternating, so both see the same machine), and reports per
photo the median graph time of each, their ratio, and how far the outputs are apart (largest
box and score differences; the labels must be equal).

Example:
    $ .venv/bin/python benchmarks/late_normalise.py --checkpoint runs/x/best.pt \\
          --photos photos/ --out benchmarks/results/wire/late_normalise.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
import unittest.mock
from pathlib import Path
from typing import Any


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint to export")
    parser.add_argument("--photos", type=Path, required=True, help="folder of image files")
    parser.add_argument("--rounds", type=int, default=15, help="timed runs per photo and graph")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args()

    import numpy as np

    from detstack.images import read_image, to_chw
    from detstack.versions import library_versions
    from export.adapter import adapter_from_checkpoint
    from export.onnx_export import export_onnx
    from export.validation import onnx_session
    from training.checkpoint import load_checkpoint

    photos = sorted(p for p in args.photos.iterdir() if p.is_file())
    images = {p.name: to_chw(read_image(p)) for p in photos}
    adapter = adapter_from_checkpoint(load_checkpoint(args.checkpoint))
    import torch

    example = torch.from_numpy(next(iter(images.values())))
    with tempfile.TemporaryDirectory(prefix="detstack-late-") as scratch:
        early, late = Path(scratch) / "early.onnx", Path(scratch) / "late.onnx"
        with unittest.mock.patch(
            "export.onnx_export.normalise_after_resize", lambda adapter: contextlib.nullcontext()
        ):
            export_onnx(adapter, early, example=example)
        export_onnx(adapter, late, example=example)
        # Sleeping idle threads: with spinning ones the idle session slows the other down.
        sessions = {
            "early": onnx_session(early, spinning=False),
            "late": onnx_session(late, spinning=False),
        }
        rows: dict[str, Any] = {}
        for name, image in images.items():
            feed = {"image": image}
            outputs = {key: session.run(None, feed) for key, session in sessions.items()}
            times: dict[str, list[float]] = {key: [] for key in sessions}
            for _ in range(args.rounds):
                for key, session in sessions.items():
                    start = time.perf_counter()
                    session.run(None, feed)
                    times[key].append((time.perf_counter() - start) * 1e3)
            medians = {key: round(statistics.median(v), 2) for key, v in times.items()}
            same_count = outputs["early"][0].shape == outputs["late"][0].shape
            rows[name] = {
                "size": f"{image.shape[2]}x{image.shape[1]}",
                "graph_ms": medians,
                "early_over_late": round(medians["early"] / medians["late"], 3),
                "detections": int(outputs["late"][0].shape[0]),
                "same_detection_count": same_count,
                "max_box_difference_px": float(
                    np.abs(outputs["early"][0] - outputs["late"][0]).max(initial=0.0)
                )
                if same_count
                else None,
                "max_score_difference": float(
                    np.abs(outputs["early"][1] - outputs["late"][1]).max(initial=0.0)
                )
                if same_count
                else None,
                "labels_equal": bool(
                    same_count and np.array_equal(outputs["early"][2], outputs["late"][2])
                ),
            }
    document = {
        "what": "graph time in onnxruntime (CPU provider), normalising before vs after the resize",
        "command": f"benchmarks/late_normalise.py --checkpoint {args.checkpoint} --photos "
        f"{args.photos} --rounds {args.rounds} --out {args.out}",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "conditions": {
            "cpus": os.cpu_count(),
            "load_average_at_end": list(os.getloadavg()),
            "libraries": library_versions(("torch", "torchvision", "onnxruntime", "numpy")),
        },
        "photos": rows,
        "median_early_over_late": round(
            statistics.median(r["early_over_late"] for r in rows.values()), 3
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    print(f"{'photo':24s} {'size':10s} {'early ms':>9s} {'late ms':>8s} {'ratio':>6s}  box diff")
    for name, row in rows.items():
        diff = row["max_box_difference_px"]
        print(
            f"{name:24s} {row['size']:10s} {row['graph_ms']['early']:9.2f} "
            f"{row['graph_ms']['late']:8.2f} {row['early_over_late']:6.2f}  "
            f"{'n/a' if diff is None else f'{diff:.2g} px'}"
        )
    print(f"median early/late: {document['median_early_over_late']:.2f}x; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
