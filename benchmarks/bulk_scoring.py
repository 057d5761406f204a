"""Measure bulk scoring (``detstack score`` / :func:`client.bulk.score_table`) rows per second
against one and two Triton servers on this machine; print a table, write JSON.

It serves the tests' tiny detector (a real exported Faster R-CNN of the ``tiny`` architecture,
64-pixel images, trained for a few seconds on coloured rectangles, so answers have boxes) with
the embedded Triton, on free loopback ports, writes a Parquet table of ``--rows`` base64 PNGs of
rectangles, and times, after a warm-up run:

* ``predict(df)``: one :class:`~client.DetectionClient` in this process, no Spark (the baseline);
* ``spark``: :func:`~client.bulk.score_table` on ``local[N]`` against 1 server, then 2 servers.

Spark's start-up is excluded (the session is started once); each timed figure is the wall time
from planning the splits to the last part written, so it includes reading the table and writing
the result.

Example:
    $ .venv/bin/python benchmarks/bulk_scoring.py --rows 2000 \\
          --output benchmarks/results/scale/bulk_scoring.json
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_repository(root: Path) -> Path:
    """The tests' tiny model, trained and exported into ``root/model_repository`` (cached)."""
    from tests.fixtures.models import make_tiny_checkpoint
    from tests.fixtures.repository import export_tiny

    repository = root / "model_repository"
    if (repository / ".complete").exists():
        return repository
    shutil.rmtree(repository, ignore_errors=True)
    checkpoint = make_tiny_checkpoint(root / "tiny.pt")
    export_tiny(repository, checkpoint)
    (repository / ".complete").touch()
    return repository


def write_table(path: Path, rows: int) -> Path:
    import pandas as pd
    from PIL import Image

    from tests.fixtures.models import tiny_shape_image

    rng = np.random.default_rng(0)
    cells = []
    for _ in range(rows):
        image, _, _ = tiny_shape_image(rng)
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        cells.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    frame = pd.DataFrame({"image_id": [f"img-{i:06d}" for i in range(rows)], "image_data": cells})
    frame.to_parquet(path, row_group_size=250, index=False)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000, help="rows of the table (default 2000)")
    parser.add_argument(
        "--rows-per-split", type=int, default=250, help="rows per Spark task (default 250)"
    )
    parser.add_argument("--batch-rows", type=int, default=125, help="rows per predict() call")
    parser.add_argument(
        "--concurrency", type=int, default=4, help="requests in flight per task (default 4)"
    )
    parser.add_argument("--master", default="local[2]", help="Spark master (default local[2])")
    parser.add_argument(
        "--work",
        type=Path,
        default=None,
        help="folder for the model repository and the table (kept: a second run reuses the "
        "model); default a temporary folder",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("benchmarks/results/scale/bulk_scoring.json"),
        help="JSON file to write",
    )
    args = parser.parse_args()

    from client import DetectionClient
    from client.bulk import BulkConfig, score_table, spark_session
    from serve import ServeConfig, TritonServer

    scratch = None
    if args.work is None:
        scratch = tempfile.TemporaryDirectory(prefix="detstack-bulk-bench-")
        work = Path(scratch.name)
    else:
        work = args.work
        work.mkdir(parents=True, exist_ok=True)
    servers: list[TritonServer] = []
    try:
        repository = build_repository(work)
        table = write_table(work / "images.parquet", args.rows)
        for _ in range(2):
            config = ServeConfig(
                repository=str(repository),
                host="127.0.0.1",
                http_port=0,
                grpc_port=0,
                metrics_port=0,
                startup_timeout_s=300.0,
                exit_timeout_s=3,
            )
            servers.append(TritonServer(config).start())
        urls = [server.endpoints.grpc for server in servers]

        import pandas as pd

        frame = pd.read_parquet(table)
        results = []
        with DetectionClient(urls[0], concurrency=args.concurrency) as client:
            client.wait_until_ready(timeout=120)
            client.predict(frame.iloc[:50][["image_data"]])  # warm-up
            start = time.perf_counter()
            client.predict(frame[["image_data"]])
            seconds = time.perf_counter() - start
        results.append(
            {
                "engine": "predict(df), no Spark",
                "servers": 1,
                "tasks_in_parallel": 1,
                "rows": args.rows,
                "seconds": seconds,
                "rows_per_s": args.rows / seconds,
            }
        )
        session = spark_session(args.master, {"spark.ui.enabled": "false"})
        session.sparkContext.setLogLevel("ERROR")
        parallel = session.sparkContext.defaultParallelism
        try:
            for count in (1, 2):
                config = BulkConfig(
                    urls=tuple(urls[:count]),
                    batch_rows=args.batch_rows,
                    rows_per_split=args.rows_per_split,
                    concurrency=args.concurrency,
                    overwrite=True,
                )
                score_table(str(table), str(work / "warmup"), config=config, spark=session)
                report = score_table(str(table), config=config, spark=session)
                results.append(
                    {
                        "engine": f"spark {args.master}",
                        "servers": count,
                        "tasks_in_parallel": parallel,
                        "rows": report.rows,
                        "failed": report.failed,
                        "splits": report.splits,
                        "seconds": report.seconds,
                        "rows_per_s": report.rows_per_s,
                        "requests_per_url": report.requests_per_url,
                    }
                )
        finally:
            session.stop()
    finally:
        for server in servers:
            server.stop()
        if scratch is not None:
            scratch.cleanup()

    conditions = {
        "model": "tests' tiny Faster R-CNN (64 px input), onnxruntime CPU in the embedded Triton",
        "images": "64x64 PNG of 1-2 coloured rectangles, base64 in Parquet",
        "wire": "encoded (the PNG file per request), gRPC",
        "concurrency_per_task": args.concurrency,
        "batch_rows": args.batch_rows,
        "rows_per_split": args.rows_per_split,
        "cpus": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "python": platform.python_version(),
        "machine": platform.platform(),
        "note": "servers and Spark share the same CPUs; one machine, loopback network",
    }
    print(f"{'engine':<24} {'servers':>7} {'rows':>6} {'seconds':>8} {'rows/s':>8}")
    for row in results:
        print(
            f"{row['engine']:<24} {row['servers']:>7} {row['rows']:>6} "
            f"{row['seconds']:>8.1f} {row['rows_per_s']:>8.1f}"
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps({"conditions": conditions, "results": results}, indent=2) + "\n",
        encoding="utf-8",
    )
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
