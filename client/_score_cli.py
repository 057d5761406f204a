"""``detstack score``: bulk-score a Parquet or CSV table of base64 images on Spark.

The command builds a :class:`~client.bulk.BulkConfig` from its flags and calls
:func:`client.bulk.score_table`; everything it does is explained in ``detstack score --help``.

Example:
    $ detstack score s3://bucket/images.parquet --url triton-0:8001 --url triton-1:8001 \\
          --token-file token.txt --master spark://spark-master:7077
"""

from __future__ import annotations

import argparse
import sys

from client.cli_options import (
    add_connection_options,
    add_server_options,
    server_urls,
    token_from_args,
)
from detstack.errors import ConfigError
from detstack.progress import progress as show_progress

_DESCRIPTION = """\
Score every row of a table of base64-encoded image files (the seed's `image_data` column) with
the served model, on Spark: local (--master local[*], the default) or a cluster. The table is a
Parquet or CSV file, or a folder/prefix of such files, on a local disk or at s3://bucket/key.
The driver reads only Parquet footers and cuts the table into tasks of about --rows-per-split
rows (a CSV file is one task); each task reads its rows itself, opens one client to every
--url server (spreading its requests over the healthy ones, failing over when one goes away),
scores them --batch-rows at a time and writes its own part. The result is a folder of
Parquet parts, by default next to the input (images.parquet -> images.scored.parquet/),
with the input's id columns, `input_row` (the row's position in the input), the seed's
output columns boxes/labels/scores (base64 of raw arrays; empty for a failed row) and
`error` (why a row failed: not base64, not an image, truncated, missing, refused by the
server). `_SUCCESS` is written when every part is in place.
Read it with pandas.read_parquet(OUTPUT) or client.bulk.read_scored(OUTPUT) (input order).
Failed rows do not fail the command (exit status 0; their count is printed); a failure of a
server itself (unreachable after retries, token refused, model not ready) does (exit 1).
On a cluster, every executor needs detstack and its [spark] extra installed, and for s3://
the AWS_* variables (spark.executorEnv.*, via --conf) or an instance role."""


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``detstack score`` to ``subparsers``."""
    parser = subparsers.add_parser(
        "score",
        help="bulk-score a Parquet/CSV table of base64 images (local or s3://) on Spark",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "input",
        metavar="TABLE",
        help="Parquet or CSV file, or a folder/prefix of them: a local path or s3://bucket/key",
    )
    parser.add_argument(
        "--output",
        default=None,
        help="output folder, local or s3:// (default: <TABLE without suffix>.scored.parquet "
        "next to the input)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier result in the output folder (a folder holding files "
        "detstack did not write is never touched)",
    )
    servers = parser.add_argument_group("servers")
    add_server_options(servers)
    add_connection_options(parser)
    servers.add_argument(
        "--retries",
        type=int,
        default=4,
        help="extra attempts of a request after a transient failure (default: 4)",
    )
    servers.add_argument(
        "--ready-timeout",
        type=float,
        default=60.0,
        help="seconds a task waits for its server and model to be ready (default: 60)",
    )
    table = parser.add_argument_group("table")
    table.add_argument(
        "--format",
        choices=("parquet", "csv"),
        default=None,
        help="input format (default: from the suffix: .parquet, .pq, .csv)",
    )
    table.add_argument(
        "--column",
        default="image_data",
        help="column of base64 image files (default: image_data)",
    )
    table.add_argument(
        "--keep",
        action="append",
        default=None,
        metavar="COLUMN",
        help="an input column to copy to the output; repeat for several (default: every "
        "column but the image column)",
    )
    table.add_argument(
        "--s3-endpoint-url",
        default=None,
        help="S3-compatible endpoint for s3:// input and output (MinIO, Ceph; default: AWS, "
        "or $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL)",
    )
    work = parser.add_argument_group("how the work is cut")
    work.add_argument(
        "--rows-per-split",
        type=int,
        default=5000,
        help="rows per Spark task: consecutive Parquet row groups are grouped up to this "
        "(default: 5000; a CSV file is one task)",
    )
    work.add_argument(
        "--batch-rows",
        type=int,
        default=256,
        help="rows per predict() call and per batch written; bounds a task's memory (default: 256)",
    )
    work.add_argument(
        "--concurrency",
        type=int,
        default=4,
        help="requests in flight per task; each task has its own client (default: 4)",
    )
    spark = parser.add_argument_group("Spark")
    spark.add_argument(
        "--master",
        default=None,
        help="Spark master: local[*] (default), local[N], spark://host:7077, yarn, k8s://...",
    )
    spark.add_argument(
        "--conf",
        action="append",
        type=_key_value,
        default=None,
        metavar="KEY=VALUE",
        help="a Spark setting for the session, e.g. spark.executor.instances=8; repeat for several",
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="do not draw the progress bar of finished tasks",
    )
    parser.set_defaults(handler=_score)


def _score(args: argparse.Namespace) -> int:
    try:
        from client.bulk import BulkConfig, score_table
    except ImportError as error:
        raise ConfigError(
            f"detstack score needs the Spark extra ({error}): pip install 'detstack[spark]'"
        ) from None

    config = BulkConfig(
        urls=server_urls(args),
        model=args.model,
        protocol=args.protocol,
        token=token_from_args(args),
        column=args.column,
        keep=None if args.keep is None else tuple(args.keep),
        batch_rows=args.batch_rows,
        rows_per_split=args.rows_per_split,
        concurrency=args.concurrency,
        timeout=args.timeout,
        retries=args.retries,
        ready_timeout=args.ready_timeout,
        format=args.format,
        s3_endpoint_url=args.s3_endpoint_url,
        overwrite=args.overwrite,
    )
    bar = None
    progress = None
    if not args.no_progress:

        def progress(done: int, total: int) -> None:
            nonlocal bar
            if bar is None:
                bar = show_progress(total=total, desc="score", unit="task", stream=sys.stderr)
            bar.update(done - bar.n)

    try:
        report = score_table(
            args.input,
            args.output,
            config=config,
            master=args.master,
            spark_conf=dict(args.conf or ()),
            progress=progress,
        )
    finally:
        if bar is not None:
            bar.close()
    print(
        f"scored {report.rows} rows ({report.failed} failed) in {report.splits} task(s), "
        f"{report.seconds:.1f} s, {report.rows_per_s:.1f} rows/s"
    )
    for url, requests in sorted(report.requests_per_url.items()):
        print(f"  {url}: {requests} requests answered")
    print(f"output: {report.output}")
    return 0
