"""What the served decode and resize do to accuracy: eager PyTorch vs the server's code path.

The served model decodes each file with the one image policy and, for an image the detector
shrinks, resizes it to the working size itself (:func:`detstack.images.decode_for_model` with
``resize``) so the graph's own resize is an identity; a JPEG can also be decoded at a reduced
DCT scale (Pillow's ``draft``). This measures, on the validation split of a trained checkpoint,
COCO AP of:

* ``eager`` (``--eager``): the PyTorch adapter (the checkpoint's detector, its own
  ``GeneralizedRCNNTransform``) on the fully decoded file: the reference;
* ``served``: the exact server code path (:class:`export.triton_python_model.DetectorRuntime`
  on the exported graph, in-process): server-side resize to the working size (the default);
* ``graph resize``: the same with the resize left to the graph (``server_resize`` 0, the
  former default);
* ``draft m2`` / ``draft m1`` (``--draft``, JPEG sets): decoded at the reduced DCT scale that
  still covers twice / once the working size.

on these file sets: ``original`` (the dataset's own files), ``xN`` (each image upscaled N times,
``--scale``, saved as JPEG quality ``--quality``) and ``WxH`` (each image resized to
``--photo-size``, a photo-sized JPEG). Boxes found on a resized file are mapped back by its
per-axis scale and scored against the dataset's ground truth with COCOeval. It prints a table
and writes JSON.

Example:
    $ .venv/bin/python benchmarks/draft_accuracy.py --checkpoint runs/x/train/best.pt \\
          --scale 8 --photo-size 4000x3000 --eager --draft \\
          --out benchmarks/results/wire/resize_accuracy.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def _size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    return int(width), int(height)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a trained checkpoint")
    parser.add_argument("--dataset", default=None, help="its dataset (default: the recorded one)")
    parser.add_argument(
        "--scale", type=int, nargs="*", default=[4, 8], help="upscalings of the JPEG files"
    )
    parser.add_argument(
        "--photo-size", type=_size, nargs="*", default=[], help="also resize them to WxH JPEGs"
    )
    parser.add_argument("--eager", action="store_true", help="score eager PyTorch as well")
    parser.add_argument("--draft", action="store_true", help="score the DCT draft decodes too")
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["served", "graph resize"],
        choices=["served", "graph resize"],
        help="which served code paths to score (eager and draft: their flags)",
    )
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality")
    parser.add_argument("--max-images", type=int, default=None, help="at most this many")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args()

    import onnxruntime
    import torch
    from PIL import Image

    from detstack.images import decode_image
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
    load_before = list(os.getloadavg())

    def jpeg(pixels: np.ndarray, size: tuple[int, int]) -> bytes:
        buffer = io.BytesIO()
        resized = Image.fromarray(pixels).resize(size, Image.Resampling.BICUBIC)
        resized.save(buffer, format="JPEG", quality=args.quality)
        return buffer.getvalue()

    # set name -> (files by image id, per-image (sx, sy) from file pixels to dataset pixels)
    sets: dict[str, tuple[dict[int, bytes], dict[int, tuple[float, float]]]] = {
        "original": (
            {i: split.dataset.read_image_bytes(i) for i in ids},
            dict.fromkeys(ids, (1, 1)),
        )
    }
    for scale in args.scale:
        files, scales = {}, {}
        for image_id in ids:
            pixels = split.dataset.read_image(image_id)
            height, width = pixels.shape[:2]
            files[image_id] = jpeg(pixels, (width * scale, height * scale))
            scales[image_id] = (scale, scale)
        sets[f"x{scale}"] = (files, scales)
    for size in args.photo_size:
        files, scales = {}, {}
        for image_id in ids:
            pixels = split.dataset.read_image(image_id)
            height, width = pixels.shape[:2]
            files[image_id] = jpeg(pixels, size)
            scales[image_id] = (size[0] / width, size[1] / height)
        sets[f"{size[0]}x{size[1]}"] = (files, scales)

    with tempfile.TemporaryDirectory(prefix="detstack-draft-") as scratch:
        onnx_path = Path(scratch) / "model.onnx"
        example = torch.from_numpy(split.dataset.read_image(ids[0])).permute(2, 0, 1).contiguous()
        export_onnx(adapter, onnx_path, opset=15, example=example, metadata={})
        session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        limits = {"min_side": 16, "max_side": 8192, "max_pixels": 64_000_000}

        def runtime(**options) -> DetectorRuntime:
            return DetectorRuntime(
                session, min_size=min_size, max_size=max_size, **limits, **options
            )

        def eager(data: bytes):
            chw = torch.from_numpy(decode_image(data)).permute(2, 0, 1).contiguous()
            with torch.no_grad():
                return tuple(value.numpy() for value in adapter(chw))

        served = {"served": runtime(), "graph resize": runtime(resize=False)}
        draft = {"draft m2": runtime(draft=True), "draft m1": runtime(draft=True, draft_margin=1.0)}
        coco_gt = split.dataset.to_coco_api(ids)
        rows = {}
        for set_name, (files, scales) in sets.items():
            modes = {"eager": eager} if args.eager else {}
            modes.update(
                {name: value.detect_encoded for name, value in served.items() if name in args.modes}
            )
            if args.draft and set_name != "original":
                modes.update({name: value.detect_encoded for name, value in draft.items()})
            for mode, detect in modes.items():
                results, total_ms = [], []
                for image_id in ids:
                    start = time.perf_counter()
                    boxes, scores, labels = detect(files[image_id])
                    total_ms.append((time.perf_counter() - start) * 1e3)
                    sx, sy = scales[image_id]
                    boxes = boxes / np.asarray([sx, sy, sx, sy], np.float32)
                    results.extend(detections_to_coco(image_id, boxes, scores, labels))
                metrics = coco_metrics(coco_gt, results, ids)
                rows[f"{set_name} {mode}"] = {
                    "AP": round(100 * metrics["AP"], 2),
                    "AP50": round(100 * metrics["AP50"], 2),
                    "detections": len(results),
                    "decode_and_detect_ms": round(float(np.median(total_ms)), 2),
                    "mean_file_bytes": int(np.mean([len(files[i]) for i in ids])),
                }
                print(f"{set_name} {mode}: {rows[f'{set_name} {mode}']}", flush=True)
    report = {
        "what": "validation split: eager PyTorch and the served runtime in-process "
        "(exported graph, onnxruntime CPU)",
        "checkpoint": str(args.checkpoint),
        "architecture": checkpoint.model_config.architecture,
        "resize": {"min_size": min_size, "max_size": max_size},
        "images": len(ids),
        "original_sizes": sorted(
            {f"{w}x{h}" for w, h in (split.dataset.image_size(i) for i in ids)}
        )[:10],
        "jpeg_scales": args.scale,
        "photo_sizes": [f"{w}x{h}" for w, h in args.photo_size],
        "jpeg_quality": args.quality,
        "eager_AP_from_training": round(100 * checkpoint.metrics["AP"], 2)
        if checkpoint.metrics and "AP" in checkpoint.metrics
        else None,
        "modes": rows,
        "served_minus_eager_AP": {
            name: round(rows[f"{name} served"]["AP"] - rows[f"{name} eager"]["AP"], 3)
            for name in sets
            if f"{name} eager" in rows
        },
        "conditions": {
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "cpu_count": os.cpu_count(),
            "load_average": load_before,
            "load_average_after": list(os.getloadavg()),
            "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__,
            "torch": torch.__version__,
        },
    }
    print(f"{'mode':26} {'AP':>7} {'AP50':>7} {'detections':>10} {'ms':>9} {'file bytes':>11}")
    for name, row in rows.items():
        print(
            f"{name:26} {row['AP']:7.2f} {row['AP50']:7.2f} {row['detections']:10d} "
            f"{row['decode_and_detect_ms']:9.2f} {row['mean_file_bytes']:11d}"
        )
    print(f"eager AP (training's evaluation): {report['eager_AP_from_training']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
