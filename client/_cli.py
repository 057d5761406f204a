"""The ``client`` stage's subcommand (registered by :mod:`cli.main`).

``detstack predict`` draws the served model's detections on images and writes them as JSON.

Example:
    $ export DETSTACK_API_TOKEN=...
    $ detstack predict photos/*.jpg --url localhost:8001 --out predictions/
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from client.cli_options import (
    add_connection_options,
    add_server_options,
    server_urls,
    token_from_args,
)
from detstack.errors import ConfigError

logger = logging.getLogger(__name__)


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
    add_server_options(predict)
    add_connection_options(predict)
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


def _predict(args: argparse.Namespace) -> int:
    from client._client import DetectionClient
    from client._config import ClientConfig
    from client.predict_folder import predict_to_folder

    if not 0.0 <= args.threshold <= 1.0:
        raise ConfigError(f"--threshold must be in [0, 1], got {args.threshold}")
    urls = server_urls(args)
    config = ClientConfig(
        url=urls[0] if len(urls) == 1 else tuple(urls),
        model=args.model,
        protocol=args.protocol,
        wire=args.wire,
        token=token_from_args(args),
        timeout=args.timeout,
        concurrency=args.concurrency,
    )
    with DetectionClient.from_config(config) as client:
        client.wait_until_ready(timeout=args.timeout)
        result = predict_to_folder(client, args.images, args.out, args.threshold)
    for outcome in result.images:
        if outcome.error is not None:
            print(f"FAILED  {outcome.source}: {outcome.error}")
        else:
            found = len(outcome.detections or ())
            print(f"{found:3d} detections  {outcome.source} -> {outcome.output}")
    print(
        f"wrote {result.detections_file} "
        f"({len(result.images) - result.failed} ok, {result.failed} failed)"
    )
    return 1 if result.failed else 0
