"""What decoding a JPEG at a reduced DCT scale (Pillow's ``draft``) does to accuracy and time.

The served model decodes a JPEG at the smallest DCT scale that still covers the detector's
working size (:func:`detstack.images.decode_for_model`). This measures, on the validation split
of a trained checkpoint, the exact server code path (:class:`export.triton_python_model.
DetectorRuntime` on the exported graph, in-process):

* ``original``: the dataset's own files (PNG here), decoded fully;
* ``xN full``: each image upscaled N times (``--scale``) and saved as a JPEG (a photo larger
  than the working size), decoded fully;
* ``xN draft m2``: the same JPEG files, decoded at the reduced DCT scale that still covers
  twice the working size (the default, ``margin`` 2);
* ``xN draft m1``: the reduced DCT scale that just covers the working size (``margin`` 1).

Boxes found on the upscaled files are divided by ``--scale`` and scored against the dataset's
ground truth with COCOeval. It prints a table and writes JSON.

Example:
    $ .venv/bin/python benchmarks/draft_accuracy.py --checkpoint runs/x/train/best.pt \\
          --scale 4 --out benchmarks/results/wire/draft_accuracy.json
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a trained checkpoint")
    parser.add_argument("--dataset", default=None, help="its dataset (default: the recorded one)")
    parser.add_argument(
        "--scale", type=int, nargs="+", default=[4, 8], help="upscalings of the JPEG files"
    )
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality")
    parser.add_argument("--max-images", type=int, default=None, help="at most this many")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args()

    import onnxruntime
    import torch
    from PIL import Image

    from export.accuracy_gate import training_split
    from export.adapter import adapter_from_checkpoint, detector_resize
    from export.onnx_export import export_onnx
    from export.triton_python_model import DetectorRuntime
    from training.checkpoint import load_checkpoint
    from training.engine import coco_metrics, detections_to_coco

    checkpoint = load_checkpoint(args.checkpoint)
    split = training_split(checkpoint, args.dataset)
    ids = list(split.val_ids)[: args.max_images]
    adapter = adapter_from_checkpoint(checkpoint)
    min_size, max_size = detector_resize(adapter)
    originals = {i: split.dataset.read_image_bytes(i) for i in ids}
    jpegs: dict[int, dict[int, bytes]] = {}
    for scale in args.scale:
        jpegs[scale] = {}
        for image_id in ids:
            pixels = split.dataset.read_image(image_id)
            height, width = pixels.shape[:2]
            big = Image.fromarray(pixels).resize(
                (width * scale, height * scale), Image.Resampling.BICUBIC
            )
            buffer = io.BytesIO()
            big.save(buffer, format="JPEG", quality=args.quality)
            jpegs[scale][image_id] = buffer.getvalue()

    with tempfile.TemporaryDirectory(prefix="detstack-draft-") as scratch:
        onnx_path = Path(scratch) / "model.onnx"
        example = torch.from_numpy(split.dataset.read_image(ids[0])).permute(2, 0, 1).contiguous()
        export_onnx(adapter, onnx_path, opset=15, example=example, metadata={})
        session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        limits = {"min_side": 16, "max_side": 8192, "max_pixels": 64_000_000}

        def runtime(draft: bool, margin: float = 2.0) -> DetectorRuntime:
            return DetectorRuntime(
                session,
                min_size=min_size,
                max_size=max_size,
                draft=draft,
                draft_margin=margin,
                **limits,
            )

        modes = {"original": (originals, runtime(False), 1)}
        for scale, files in jpegs.items():
            modes[f"x{scale} full"] = (files, runtime(False), scale)
            modes[f"x{scale} draft m2"] = (files, runtime(True, 2.0), scale)
            modes[f"x{scale} draft m1"] = (files, runtime(True, 1.0), scale)
        coco_gt = split.dataset.to_coco_api(ids)
        rows = {}
        for name, (files, runtime, scale) in modes.items():
            results, decode_ms, total_ms = [], [], []
            for image_id in ids:
                start, cpu = time.perf_counter(), time.thread_time()
                runtime.decode(files[image_id])
                decode_ms.append((time.thread_time() - cpu) * 1e3)
                boxes, scores, labels = runtime.detect_encoded(files[image_id])
                total_ms.append((time.perf_counter() - start) * 1e3)
                results.extend(detections_to_coco(image_id, boxes / scale, scores, labels))
            metrics = coco_metrics(coco_gt, results, ids)
            rows[name] = {
                "AP": round(100 * metrics["AP"], 2),
                "AP50": round(100 * metrics["AP50"], 2),
                "decode_cpu_ms": round(float(np.median(decode_ms)), 2),
                "decode_and_detect_ms": round(float(np.median(total_ms)), 2),
                "mean_file_bytes": int(np.mean([len(files[i]) for i in ids])),
            }
    eager = checkpoint.metrics.get("AP") if checkpoint.metrics else None
    report = {
        "what": "validation split through the served runtime in-process "
        "(exported graph, onnxruntime CPU)",
        "checkpoint": str(args.checkpoint),
        "architecture": checkpoint.model_config.architecture,
        "resize": {"min_size": min_size, "max_size": max_size},
        "images": len(ids),
        "original_sizes": sorted(
            {f"{w}x{h}" for w, h in (split.dataset.image_size(i) for i in ids)}
        )[:10],
        "jpeg_scales": args.scale,
        "jpeg_quality": args.quality,
        "eager_AP_from_training": round(100 * eager, 2) if eager is not None else None,
        "modes": rows,
        "draft_minus_full_AP": {
            f"x{scale} m{margin}": round(
                rows[f"x{scale} draft m{margin}"]["AP"] - rows[f"x{scale} full"]["AP"], 3
            )
            for scale in args.scale
            for margin in (2, 1)
        },
        "full_over_draft_decode_cpu": {
            f"x{scale} m{margin}": round(
                rows[f"x{scale} full"]["decode_cpu_ms"]
                / max(1e-9, rows[f"x{scale} draft m{margin}"]["decode_cpu_ms"]),
                2,
            )
            for scale in args.scale
            for margin in (2, 1)
        },
        "conditions": {
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "cpu_count": __import__("os").cpu_count(),
            "load_average": list(__import__("os").getloadavg()),
            "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__,
            "torch": torch.__version__,
        },
    }
    print(
        f"{'mode':14} {'AP':>7} {'AP50':>7} {'decode cpu ms':>14} {'decode+detect ms':>17} "
        f"{'file bytes':>11}"
    )
    for name, row in rows.items():
        print(
            f"{name:14} {row['AP']:7.2f} {row['AP50']:7.2f} {row['decode_cpu_ms']:14.2f} "
            f"{row['decode_and_detect_ms']:17.2f} {row['mean_file_bytes']:11d}"
        )
    print(f"eager AP (training's evaluation): {report['eager_AP_from_training']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
