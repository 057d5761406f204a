"""The ``detstack bench`` subcommand (registered by :mod:`cli.main`).

It measures the served model's latency and throughput, per transport, wire and concurrency,
against the seed's eager PyTorch wrapper in the same run.

Example:
    $ detstack bench photos/ --checkpoint runs/exp/checkpoint.pt --out bench-results/
"""

from __future__ import annotations

import argparse
from pathlib import Path

from client.cli_options import add_connection_options, token_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench`` to ``subparsers``."""
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
    add_connection_options(bench)
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


def _photo_size(text: str | None) -> tuple[int, int] | None:
    from bench._results import parse_photo_size

    return None if text is None else parse_photo_size(text)


def _bench(args: argparse.Namespace) -> int:
    from bench import BenchConfig, format_table, run_benchmark, write_report

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
        token=token_from_args(args),
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
