"""The ``client`` stage's subcommand (registered by :mod:`cli.main`).

``detstack predict`` draws the served model's detections on images and writes them as JSON.

Example:
    $ export DETSTACK_API_TOKEN=...
    $ detstack predict photos/*.jpg --url localhost:8001 --out predictions/
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from client.cli_options import add_connection_options, token_from_args
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
        token=token_from_args(args),
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
