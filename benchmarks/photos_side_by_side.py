"""Real photos, served against the seed's eager wrapper, with every path timed in the same moment.

``detstack bench`` measures one setting after another. On a shared machine the load changes
between those blocks, and on the quickstart model the ratio we care about (served / eager,
issue 9's "≥ 1.6×" on real photos) swung from 1.2× to 1.6× between otherwise identical runs.
This script takes that drift out: it serves each variant with its own embedded Triton at the
same time, and for every photo it alternates between the eager wrapper and each served variant,
so every path sees the same machine. Two orders:

* ``request``: eager, variant 1, variant 2, ... for one request each, repeated. No path ever
  runs twice in a row, so none keeps warm caches or spinning threads from its last request:
  what a server sees when requests arrive one at a time, spread out.
* ``block``: the same rotation with ``--block`` requests of a path in a row; only the last
  ``--block - 1`` of each block are timed, so each path runs warm, as in a closed loop.

Served requests carry the file (``DetectionClient.infer_encoded``: the default ``encoded``
wire); the eager wrapper gets the seed's base64 text and returns base64 outputs, as the seed's
``ModelWrapper.predict`` does. The figure per photo and path is the median over ``--rounds``;
the headline is the median over photos of eager / served.

Variants (``--variants``): ``fp32`` (the default export), ``fp32-before`` (the graph as exported
before :mod:`export._late_normalise` and :mod:`export._roi_align`: normalising the full image,
onnxruntime's RoiAlign kernel), ``int8`` (``export --precision int8``; needs ``--dataset``, the
checkpoint's training dataset, for calibration and the accuracy gate).

Example:
    $ .venv/bin/python benchmarks/photos_side_by_side.py --checkpoint runs/x/best.pt \\
          --photos photos/ --variants fp32 fp32-before --order request --out results/photos
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import statistics
import tempfile
import time
import unittest.mock
from pathlib import Path
from typing import Any

VARIANTS = ("fp32", "fp32-before", "int8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint to serve")
    parser.add_argument("--photos", type=Path, required=True, help="folder of image files")
    parser.add_argument(
        "--variants", nargs="+", choices=VARIANTS, default=["fp32"], help="served variants"
    )
    parser.add_argument(
        "--dataset", type=Path, help="the checkpoint's training dataset (needed for int8)"
    )
    parser.add_argument("--order", choices=["request", "block"], default="request")
    parser.add_argument("--block", type=int, default=4, help="requests per block (block order)")
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds per photo")
    parser.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    parser.add_argument("--out", type=Path, required=True, help="folder for JSON and plot")
    args = parser.parse_args()
    if "int8" in args.variants and args.dataset is None:
        parser.error("--variants int8 needs --dataset (calibration and the accuracy gate)")
    if args.block < 2 or args.rounds < 1:
        parser.error("--block must be at least 2 and --rounds at least 1")
    photos = sorted(p for p in args.photos.iterdir() if p.is_file())
    if not photos:
        parser.error(f"--photos {args.photos} holds no files")

    with (
        tempfile.TemporaryDirectory(prefix="detstack-photos-") as scratch,
        contextlib.ExitStack() as stack,
    ):
        clients = {
            variant: stack.enter_context(_served(variant, args, Path(scratch) / variant))
            for variant in args.variants
        }
        rows = _measure(args, photos, clients)
    document = _document(args, photos, rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "photos_side_by_side.json").write_text(
        json.dumps(document, indent=1) + "\n", encoding="utf-8"
    )
    _plot(document, args.out / "photos_side_by_side.png")
    _print_table(document)
    print(f"wrote {args.out / 'photos_side_by_side.json'} and photos_side_by_side.png")
    return 0


@contextlib.contextmanager
def _served(variant: str, args: argparse.Namespace, root: Path) -> Any:
    """Export ``variant`` into its own repository, serve it, and yield a connected client."""
    from client import DetectionClient
    from export import ExportConfig, export_checkpoint
    from serve import ServeConfig, TritonServer

    with contextlib.ExitStack() as patches:
        if variant == "fp32-before":
            for name in ("normalise_after_resize", "small_map_roi_align"):
                patches.enter_context(
                    unittest.mock.patch(
                        f"export.onnx_export.{name}", lambda _: contextlib.nullcontext()
                    )
                )
        exported = export_checkpoint(
            args.checkpoint,
            ExportConfig(
                repository=root,
                samples_from=str(args.dataset) if args.dataset else None,
                precision="int8" if variant == "int8" else "fp32",
            ),
        )
    config = ServeConfig(
        repository=str(root),
        host="127.0.0.1",
        http_port=0,
        grpc_port=0,
        metrics_port=0,
        startup_timeout_s=300.0,
    )
    with TritonServer(config) as server:
        url = server.endpoints.grpc if args.protocol == "grpc" else server.endpoints.http
        with DetectionClient(
            url, model=exported.model_dir.name, protocol=args.protocol, concurrency=1
        ) as client:
            client.wait_until_ready(120)
            yield client


def _measure(
    args: argparse.Namespace, photos: list[Path], clients: dict[str, Any]
) -> dict[str, dict[str, list[float]]]:
    """Per photo and path, the timed milliseconds of every round."""
    from bench._eager import EagerBaseline
    from detstack.progress import progress

    eager = EagerBaseline(args.checkpoint)
    paths: dict[str, Any] = {"eager": None, **clients}
    rows: dict[str, dict[str, list[float]]] = {}
    per_turn = 1 if args.order == "request" else args.block
    bar = progress(total=len(photos) * args.rounds, desc="photos x rounds", unit="round")
    for photo in photos:
        data = photo.read_bytes()
        cell = base64.b64encode(data).decode("ascii")
        calls = {
            name: _call(eager, cell) if client is None else _call(client.infer_encoded, data)
            for name, client in paths.items()
        }
        for call in calls.values():  # warm every path on this photo
            call()
            call()
        times: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(args.rounds):
            for name, call in calls.items():
                spent = []
                for _ in range(per_turn):
                    start = time.perf_counter()
                    call()
                    spent.append((time.perf_counter() - start) * 1e3)
                # block order: the first request of a block only warms the path up
                times[name].extend(spent if per_turn == 1 else spent[1:])
            bar.update(1)
        rows[photo.name] = times
    bar.close()
    return rows


def _call(function: Any, argument: Any) -> Any:
    return lambda: function(argument)


def _document(
    args: argparse.Namespace, photos: list[Path], rows: dict[str, dict[str, list[float]]]
) -> dict[str, Any]:
    from PIL import Image

    from detstack.versions import library_versions

    per_photo = {}
    for photo in photos:
        with Image.open(photo) as image:
            size = f"{image.width}x{image.height} {image.format}"
        medians = {name: round(statistics.median(v), 2) for name, v in rows[photo.name].items()}
        per_photo[photo.name] = {
            "size": size,
            "file_bytes": photo.stat().st_size,
            "p50_ms": medians,
            "eager_over_served": {
                name: round(medians["eager"] / medians[name], 3)
                for name in medians
                if name != "eager"
            },
        }
    variants = [name for name in next(iter(rows.values())) if name != "eager"]
    return {
        "what": "real photos: the seed's eager wrapper vs served variants, alternated in one run",
        "command": "benchmarks/photos_side_by_side.py "
        + " ".join(
            f"--{key.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for key, v in sorted(vars(args).items())
            if v is not None
        ),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "conditions": {
            "cpus": os.cpu_count(),
            "load_average_at_end": list(os.getloadavg()),
            "order": args.order,
            "rounds": args.rounds,
            "block": args.block if args.order == "block" else 1,
            "protocol": args.protocol,
            "libraries": library_versions(
                ("torch", "onnxruntime", "numpy", "Pillow", "tritonclient")
            ),
        },
        "photos": per_photo,
        "median_eager_over_served": {
            name: round(
                statistics.median(p["eager_over_served"][name] for p in per_photo.values()), 3
            )
            for name in variants
        },
        "target": "served >= 1.6x faster than eager (median over photos), issue 9",
    }


def _print_table(document: dict[str, Any]) -> None:
    photos = document["photos"]
    names = list(next(iter(photos.values()))["p50_ms"])
    header = f"{'photo':24s} {'size':18s} " + " ".join(f"{n:>11s}" for n in names)
    print(header + "   " + " ".join(f"{'x ' + n:>12s}" for n in names if n != "eager"))
    for photo, row in photos.items():
        line = f"{photo:24s} {row['size']:18s} " + " ".join(
            f"{row['p50_ms'][n]:9.1f}ms" for n in names
        )
        ratios = " ".join(f"{row['eager_over_served'][n]:11.2f}x" for n in names if n != "eager")
        print(f"{line}   {ratios}")
    for name, ratio in document["median_eager_over_served"].items():
        print(f"median eager/served, {name}: {ratio:.2f}x ({document['conditions']['order']})")


def _plot(document: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    photos = list(document["photos"])
    variants = list(document["median_eager_over_served"])
    width = 0.8 / len(variants)
    figure, axes = plt.subplots(figsize=(max(6.0, 1.1 * len(photos)), 3.8))
    for index, name in enumerate(variants):
        values = [document["photos"][p]["eager_over_served"][name] for p in photos]
        axes.bar(np.arange(len(photos)) + index * width, values, width, label=name)
    axes.axhline(1.6, color="black", linestyle="--", linewidth=1, label="target 1.6x")
    axes.axhline(1.0, color="grey", linewidth=0.8)
    axes.set_xticks(np.arange(len(photos)) + width * (len(variants) - 1) / 2)
    axes.set_xticklabels([p.rsplit(".", 1)[0] for p in photos], rotation=30, ha="right")
    axes.set_ylabel("eager time / served time")
    axes.set_title(f"served vs eager per photo ({document['conditions']['order']} order)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    raise SystemExit(main())
