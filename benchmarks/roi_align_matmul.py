"""onnxruntime's RoiAlign against export._roi_align's matrix form, by feature-map size.

Each configuration (channels, boxes, map side) is exported twice as a one-operator graph
(torchvision's ``roi_align`` as onnxruntime's ``RoiAlign``, and
:func:`export._roi_align.matmul_roi_align`), both run in onnxruntime's CPU provider on the same
random map and boxes, alternating, and the script prints and writes the median times, their
ratio and the largest difference. Where the ratio falls below 1 is where
:data:`export._roi_align.MAX_MAP_AREA` should sit.

Example:
    $ .venv/bin/python benchmarks/roi_align_matmul.py \\
          --out benchmarks/results/wire/roi_align_matmul.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

#: (channels, boxes, map side): the quickstart's box head (128 channels, 100 proposals) over
#: growing maps, then ResNet-50 FPN's (256 channels, 1000 proposals).
CASES = (
    (128, 100, 8),
    (128, 100, 16),
    (128, 100, 24),
    (128, 100, 32),
    (128, 100, 40),
    (128, 100, 48),
    (256, 1000, 16),
    (256, 1000, 32),
    (256, 1000, 48),
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=21, help="timed runs per graph and case")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args()

    import numpy as np
    import torch
    import torchvision

    from detstack.versions import library_versions
    from export._roi_align import MAX_MAP_AREA, matmul_roi_align

    class Kernel(torch.nn.Module):
        def forward(self, features: Any, rois: Any) -> Any:
            return torchvision.ops.roi_align(features, rois, (7, 7), 0.125, 2)

    class Products(torch.nn.Module):
        def forward(self, features: Any, rois: Any) -> Any:
            return matmul_roi_align(features, rois, (7, 7), 0.125, 2)

    rows = []
    generator = torch.Generator().manual_seed(0)
    for channels, boxes, side in CASES:
        features = torch.rand(1, channels, side, side, generator=generator)
        corner = torch.rand(boxes, 2, generator=generator) * side * 8 * 0.8
        size = torch.rand(boxes, 2, generator=generator) * side * 8 * 0.4 + 4
        rois = torch.cat([torch.zeros(boxes, 1), corner, corner + size], 1)
        feed = {"features": features.numpy(), "rois": rois.numpy()}
        sessions = {"RoiAlign": _session(Kernel(), features, rois)}
        sessions["matrix products"] = _session(Products(), features, rois)
        outputs = {name: s.run(None, feed)[0] for name, s in sessions.items()}
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for _ in range(args.rounds):
            for name, session in sessions.items():
                start = time.perf_counter()
                session.run(None, feed)
                times[name].append((time.perf_counter() - start) * 1e3)
        medians = {name: round(statistics.median(v), 3) for name, v in times.items()}
        rows.append(
            {
                "channels": channels,
                "boxes": boxes,
                "map": f"{side}x{side}",
                "map_area": side * side,
                "ms": medians,
                "roialign_over_products": round(
                    medians["RoiAlign"] / medians["matrix products"], 3
                ),
                "max_difference": float(
                    np.abs(outputs["RoiAlign"] - outputs["matrix products"]).max()
                ),
            }
        )
        print(
            f"C={channels:4d} N={boxes:5d} map {side:3d}x{side:<3d} RoiAlign "
            f"{medians['RoiAlign']:8.2f} ms  products {medians['matrix products']:8.2f} ms  "
            f"ratio {rows[-1]['roialign_over_products']:5.2f}  "
            f"diff {rows[-1]['max_difference']:.1e}"
        )
    document = {
        "what": "RoI pooling of one map in onnxruntime (CPU): RoiAlign vs two matrix products",
        "command": f"benchmarks/roi_align_matmul.py --rounds {args.rounds} --out {args.out}",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "conditions": {
            "cpus": os.cpu_count(),
            "load_average_at_end": list(os.getloadavg()),
            "output": "7x7, sampling ratio 2, spatial scale 1/8, aligned false",
            "libraries": library_versions(("torch", "torchvision", "onnxruntime")),
        },
        "max_map_area_used_by_export": MAX_MAP_AREA,
        "cases": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


def _session(module: Any, features: Any, rois: Any) -> Any:
    """``module`` traced at opset 15 and opened as the gates open a graph (threads that sleep)."""
    import torch

    from export.validation import onnx_session

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (features, rois),
            buffer,
            dynamo=False,
            opset_version=15,
            input_names=["features", "rois"],
            output_names=["pooled"],
            dynamic_axes={"features": {2: "h", 3: "w"}, "rois": {0: "n"}},
        )
    return onnx_session(buffer.getvalue(), spinning=False)


if __name__ == "__main__":
    raise SystemExit(main())
