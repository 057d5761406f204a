"""Subcommands of the ``client`` stage (registered by :mod:`detstack.cli`).

``detstack predict`` draws the served model's detections on images and writes them as JSON;
``detstack bench`` measures the served model's latency and throughput against the eager
PyTorch baseline.

Example:
    $ export DETSTACK_API_TOKEN=...
    $ detstack predict photos/*.jpg --url localhost:8001 --out predictions/
    $ detstack bench photos/ --checkpoint runs/exp/checkpoint.pt --out bench-results/
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from detstack.contract import DEFAULT_MODEL_NAME
from detstack.errors import ConfigError
from detstack.tokens import TOKEN_ENV, read_token

logger = logging.getLogger(__name__)


def _token(args: argparse.Namespace) -> str | None:
    found = read_token(args.token, args.token_file)
    return None if found is None else found[0]


def _add_connection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL_NAME,
        help=f"name of the served model (default: {DEFAULT_MODEL_NAME})",
    )
    token = parser.add_argument_group("API token (when the server was started with one)")
    token.add_argument(
        "--token",
        default=None,
        help=f"the API token; prefer --token-file or ${TOKEN_ENV}, which other users cannot "
        "read in the process list",
    )
    token.add_argument("--token-file", type=Path, default=None, help="file holding the token")
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="deadline of each request in seconds (default: 60)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands to ``subparsers``."""
    predict = subparsers.add_parser(
        "predict",
        help="detect objects in images with the served model; write annotated images and JSON",
        description=(
            "Send each image to the Triton server (one request per image), draw the detections "
            "at or above --threshold (box, category name, score; one colour per category) and "
            "write them as OUT/<name>.<ext> plus OUT/detections.json. Category names come from "
            "the served model. Images that fail are reported and the others still written; "
            "the exit status is 1 if any failed."
        ),
    )
    predict.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files")
    predict.add_argument(
        "--url",
        action="append",
        default=None,
        help=(
            "host:port of the server (default: localhost:8001 for gRPC, localhost:8000 HTTP); "
            "repeat for several servers of one repository (requests spread over the healthy ones)"
        ),
    )
    predict.add_argument(
        "--protocol",
        choices=("grpc", "http"),
        default="grpc",
        help="transport (default: grpc)",
    )
    _add_connection(predict)
    predict.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="lowest score drawn and written to the JSON (default: 0.5)",
    )
    predict.add_argument(
        "--out", type=Path, required=True, help="folder for annotated images and detections.json"
    )
    predict.add_argument(
        "--concurrency", type=int, default=4, help="requests in flight at once (default: 4)"
    )
    predict.add_argument(
        "--wire",
        choices=("encoded", "pixels"),
        default="encoded",
        help="what a request carries: encoded (default: the image file, decoded by the server) "
        "or pixels (decoded here, sent as uint8 CHW: for a server without the encoded input)",
    )
    predict.set_defaults(handler=_predict)

    bench = subparsers.add_parser(
        "bench",
        help="measure latency and throughput of the served model vs eager PyTorch",
        description=(
            "Send real images (files, folders, or --dataset) to the served model over each "
            "transport and concurrency level, after a warm-up, and report p50/p90/p95/p99/mean "
            "latency and throughput, the client-side decode/encode time and Triton's server-side "
            "queue and compute time (statistics API). With --checkpoint, also run the eager "
            "PyTorch baseline (what the seed's ModelWrapper does) in this process on the same "
            "images and print the ratio. Writes bench.json, bench.csv and bench.png to --out."
        ),
    )
    bench.add_argument(
        "images",
        nargs="*",
        type=Path,
        metavar="IMAGE",
        help="image files or folders of images (searched recursively)",
    )
    bench.add_argument(
        "--dataset",
        default=None,
        help="use the images of this COCO dataset (folder, .json or s3://) instead",
    )
    bench.add_argument(
        "--max-images",
        type=int,
        default=16,
        help="distinct images to cycle through (default: 16)",
    )
    bench.add_argument("--grpc-url", default="localhost:8001", help="gRPC endpoint")
    bench.add_argument("--http-url", default="localhost:8000", help="HTTP endpoint")
    bench.add_argument(
        "--protocol",
        dest="protocols",
        nargs="+",
        choices=("grpc", "http"),
        default=["grpc", "http"],
        help="transports to measure (default: grpc http)",
    )
    bench.add_argument(
        "--wire",
        dest="wires",
        nargs="+",
        choices=("encoded", "pixels"),
        default=["encoded", "pixels"],
        help="what a request carries: encoded (the image file; the server decodes it) and/or "
        "pixels (decoded here, uint8 CHW) (default: both, side by side)",
    )
    bench.add_argument(
        "--photo-size",
        default=None,
        metavar="WxH",
        help="re-encode every image as a WxH JPEG first (e.g. 640x480, 1920x1080, 4000x3000), "
        "to measure photo-sized files (default: the files as they are)",
    )
    _add_connection(bench)
    bench.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=[1, 2, 4],
        help="concurrency levels of the sweep (default: 1 2 4)",
    )
    bench.add_argument(
        "--requests",
        type=int,
        default=100,
        help="recorded requests per level after warm-up (default: 100)",
    )
    bench.add_argument(
        "--warmup", type=int, default=10, help="unrecorded requests first (default: 10)"
    )
    bench.add_argument(
        "--max-seconds",
        type=float,
        default=60.0,
        help="time cap of each level's recorded requests (default: 60)",
    )
    bench.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="checkpoint for the eager PyTorch baseline (the one that was exported)",
    )
    bench.add_argument(
        "--baseline-requests",
        type=int,
        default=None,
        help="recorded baseline requests (default: --requests)",
    )
    bench.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="intra-op threads of the baseline (default: torch's choice)",
    )
    bench.add_argument(
        "--out",
        type=Path,
        default=Path("bench-results"),
        help="folder for bench.json, bench.csv, bench.png (default: bench-results)",
    )
    bench.set_defaults(handler=_bench)


def _predict(args: argparse.Namespace) -> int:
    from client._client import ClientConfig, DetectionClient
    from client.codec import RowError, encode_image
    from client.drawing import draw_detections
    from detstack.images import decode_image

    if not 0.0 <= args.threshold <= 1.0:
        raise ConfigError(f"--threshold must be in [0, 1], got {args.threshold}")
    urls = args.url or ["localhost:8001" if args.protocol == "grpc" else "localhost:8000"]
    config = ClientConfig(
        url=urls[0] if len(urls) == 1 else tuple(urls),
        model=args.model,
        protocol=args.protocol,
        wire=args.wire,
        token=_token(args),
        timeout=args.timeout,
        concurrency=args.concurrency,
    )
    import pandas as pd

    cells, unreadable = {}, {}
    for position, path in enumerate(args.images):
        try:
            cells[position] = encode_image(path.read_bytes())
        except OSError as error:
            unreadable[position] = f"{path}: cannot read ({error.strerror or error})"
    frame = pd.DataFrame({"image_data": pd.Series(cells, dtype=object)})
    args.out.mkdir(parents=True, exist_ok=True)
    with DetectionClient.from_config(config) as client:
        client.wait_until_ready(timeout=args.timeout)
        rows = dict(zip(frame.index, client.predict_rows(frame), strict=True))
        entries, used, failed = [], set(), 0
        for position, path in enumerate(args.images):
            entry: dict[str, object] = {"image": str(path)}
            result = rows.get(position)
            if position in unreadable or isinstance(result, RowError):
                reason = unreadable.get(position) or result.reason  # type: ignore[union-attr]
                reason = reason.replace(f"row {position!r}", str(path))
                entry["error"] = reason
                failed += 1
                print(f"FAILED  {path}: {reason}")
                entries.append(entry)
                continue
            pixels = decode_image(path.read_bytes(), source=str(path))
            kept = result.above(args.threshold)
            labels = client.labels(result.model_version or None)
            suffix = ".jpg" if path.suffix.lower() in (".jpg", ".jpeg") else ".png"
            name, counter = f"{path.stem}{suffix}", 1
            while name in used:
                name, counter = f"{path.stem}_{counter}{suffix}", counter + 1
            used.add(name)
            picture = draw_detections(pixels, result, labels, args.threshold)
            if suffix == ".jpg":
                picture.save(args.out / name, quality=92)
            else:
                picture.save(args.out / name)
            entry.update(
                output=str(args.out / name),
                width=int(pixels.shape[1]),
                height=int(pixels.shape[0]),
                **kept.to_dict(),
            )
            entries.append(entry)
            print(f"{len(kept):3d} detections  {path} -> {args.out / name}")
    document = {
        "model": config.model,
        "url": (
            f"{config.protocol}://{config.address}"
            if len(config.addresses) == 1
            else [f"{config.protocol}://{address}" for address in config.addresses]
        ),
        "threshold": args.threshold,
        "images": entries,
    }
    (args.out / "detections.json").write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.out / 'detections.json'} ({len(entries) - failed} ok, {failed} failed)")
    return 1 if failed else 0


def _photo_size(text: str | None) -> tuple[int, int] | None:
    from detstack.errors import ConfigError

    if text is None:
        return None
    width, _, height = text.lower().partition("x")
    if not (width.isdecimal() and height.isdecimal()):
        raise ConfigError(f"--photo-size must be WIDTHxHEIGHT such as 1920x1080, got {text!r}")
    return int(width), int(height)


def _bench(args: argparse.Namespace) -> int:
    from client._bench_output import format_table, write_report
    from client.bench import BenchConfig, run_benchmark

    config = BenchConfig(
        images=tuple(args.images),
        dataset=args.dataset,
        max_images=args.max_images,
        grpc_url=args.grpc_url,
        http_url=args.http_url,
        protocols=tuple(dict.fromkeys(args.protocols)),
        wires=tuple(dict.fromkeys(args.wires)),
        photo_size=_photo_size(args.photo_size),
        model=args.model,
        token=_token(args),
        concurrency=tuple(args.concurrency),
        requests=args.requests,
        warmup=args.warmup,
        max_seconds=args.max_seconds,
        checkpoint=args.checkpoint,
        baseline_requests=args.baseline_requests,
        torch_threads=args.torch_threads,
        timeout=args.timeout,
        progress=True,
    )
    report = run_benchmark(config)
    print(format_table(report))
    paths = write_report(report, args.out)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
