"""Bulk scoring: run ``DetectionClient.predict`` over a large table of base64 images on Spark.

For whoever has millions of images in a Parquet or CSV table (local, or on S3) and a Spark they
already run, local or a cluster. Two entry points share one partition function:

* :func:`score_table`: a table in, a folder of Parquet parts out, next to the input by default
  (``images.parquet`` → ``images.scored.parquet/part-00000.parquet ... _SUCCESS``). The driver
  reads only the Parquet footers and cuts the table into splits of row groups; each Spark task
  reads its split itself (pyarrow, local or ``s3://``, no Hadoop S3 connector needed), scores it
  and writes its part, so no image passes through the driver. ``detstack score`` calls it.
* :func:`score_dataframe`: a Spark DataFrame in (read however your cluster reads: ``s3a://``,
  Hive, Delta), a lazy Spark DataFrame out, for pipelines that go on in Spark.

Each Spark task opens **one** :class:`~client.DetectionClient` (its own connections and
``concurrency`` requests in flight), waits until the model is ready, scores its rows batch by
batch with the seed's ``predict(df)`` and closes the client when the task ends. The client gets
every URL, task *p* on attempt *a* starting at ``urls[(p + a) % len(urls)]``: it spreads the
task's requests over the healthy servers (least outstanding requests) and moves them to the
others when one goes away, so losing a server does not fail the task.

The output keeps the input's id columns (every column but the image column, or ``keep``), the
seed's three output columns ``boxes``, ``labels``, ``scores`` (base64 of raw little-endian
arrays, ``None`` for a failed row) and one more column, ``error``: ``None``, or why that row got
no prediction (not base64, not an image, truncated, missing, refused by the server). The table
output also has ``input_row``, the row's position in the input. A server-wide failure
(unreachable after retries, token refused, model not ready) fails the task, and the job after
Spark's retries, with that error: a dead fleet is not a million bad rows.

Example:
    >>> config = BulkConfig(urls=("triton-0:8001", "triton-1:8001"), token=token)
    ...                                                                   # doctest: +SKIP
    >>> report = score_table("s3://bucket/images.parquet", config=config)  # doctest: +SKIP
    >>> report.rows, report.failed, report.output                          # doctest: +SKIP
    (1000000, 12, 's3://bucket/images.scored.parquet')
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa

from client import _bulk_io, _bulk_output
from client._bulk_config import BulkConfig, BulkReport
from client._bulk_io import Split, TableLocation
from client._bulk_output import PartWriter
from client._client import DetectionClient
from client._spark import SparkProgress, active_session, spark_session, task_failure
from client.codec import OUTPUT_COLUMNS, row_errors
from detstack.errors import ConfigError, DetstackError, StorageError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame as SparkDataFrame
    from pyspark.sql import SparkSession

__all__ = [
    "ERROR_COLUMN",
    "ROW_COLUMN",
    "BulkConfig",
    "BulkReport",
    "read_scored",
    "score_dataframe",
    "score_table",
    "spark_session",
]

logger = logging.getLogger(__name__)

#: The per-row reason column the bulk output adds (``None`` for a scored row).
ERROR_COLUMN = "error"
#: The table output's column holding each row's position in the input table.
ROW_COLUMN = "input_row"
_SUMMARY_SCHEMA = "split long, rows long, failed long, seconds double, answered string"


# --- the work of one task (runs on the Spark workers) -------------------------------------


def _task_urls(config: BulkConfig) -> tuple[str, ...]:
    """Every URL, starting at a different one per task and per attempt."""
    from pyspark import TaskContext

    context = TaskContext.get()
    partition, attempt = (
        (context.partitionId(), context.attemptNumber()) if context is not None else (0, 0)
    )
    first = (partition + attempt) % len(config.urls)
    return config.urls[first:] + config.urls[:first]


def _answered(client: DetectionClient) -> dict[str, int]:
    return {stats.url: stats.succeeded for stats in client.endpoint_stats()}


def _open_client(config: BulkConfig, urls: tuple[str, ...]) -> DetectionClient:
    client = DetectionClient.from_config(config.client_config(urls))
    try:
        client.wait_until_ready(timeout=config.ready_timeout)
    except BaseException:
        client.close()
        raise
    return client


def _predictions(
    client: DetectionClient, images: Sequence[object], column: str
) -> tuple[dict[str, list[str | None]], list[str | None]]:
    """The three output columns and the per-row reasons for one batch of cells."""
    frame = pd.DataFrame({column: pd.Series(list(images), dtype=object)})
    result = client.predict(frame, column=column)
    reasons = row_errors(result)
    outputs = {name: result[name].tolist() for name in OUTPUT_COLUMNS}
    return outputs, [reasons.get(position) for position in range(len(frame))]


def _output_schema(input_schema: pa.Schema, keep: Sequence[str], *, with_row: bool) -> pa.Schema:
    fields = [input_schema.field(name) for name in keep]
    if with_row:
        fields.append(pa.field(ROW_COLUMN, pa.int64(), nullable=False))
    fields += [pa.field(name, pa.string()) for name in (*OUTPUT_COLUMNS, ERROR_COLUMN)]
    return pa.schema(fields)


def _score_batch(
    client: DetectionClient,
    batch: pa.RecordBatch,
    first_row: int,
    config: BulkConfig,
    keep: Sequence[str],
    schema: pa.Schema,
) -> tuple[pa.RecordBatch, int]:
    images = batch.column(config.column).to_pylist()
    outputs, reasons = _predictions(client, images, config.column)
    arrays: list[pa.Array] = []
    for name in keep:
        try:
            arrays.append(batch.column(name).cast(schema.field(name).type))
        except (KeyError, pa.ArrowException) as error:
            raise StorageError(
                f"rows from {first_row}: column {name!r} is missing or not of type "
                f"{schema.field(name).type} ({error})"
            ) from None
    arrays.append(pa.array(range(first_row, first_row + batch.num_rows), pa.int64()))
    arrays += [pa.array(outputs[name], pa.string()) for name in OUTPUT_COLUMNS]
    arrays.append(pa.array(reasons, pa.string()))
    failed = sum(reason is not None for reason in reasons)
    return pa.RecordBatch.from_arrays(arrays, schema=schema), failed


def _score_split(
    client: DetectionClient,
    split: Split,
    config: BulkConfig,
    keep: Sequence[str],
    schema: pa.Schema,
    table: TableLocation,
    output: TableLocation,
) -> tuple[int, int]:
    writer = PartWriter(output, split.number, schema)
    rows = failed = 0
    try:
        for first_row, batch in _bulk_io.read_split(table, split, batch_rows=config.batch_rows):
            scored, batch_failed = _score_batch(client, batch, first_row, config, keep, schema)
            writer.write(scored)
            rows += scored.num_rows
            failed += batch_failed
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return rows, failed


def _split_task(
    config: BulkConfig,
    keep: tuple[str, ...],
    schema: pa.Schema,
    table: TableLocation,
    output: TableLocation,
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The ``mapInPandas`` function of :func:`score_table`: split descriptors in, summaries out."""

    def run(descriptors: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        urls = _task_urls(config)
        client: DetectionClient | None = None
        try:
            for frame in descriptors:
                for text in frame["split"]:
                    split = Split(**{k: _untuple(v) for k, v in json.loads(text).items()})
                    if client is None:
                        client = _open_client(config, urls)
                    before = _answered(client)
                    start = time.perf_counter()
                    rows, failed = _score_split(client, split, config, keep, schema, table, output)
                    answered = {
                        url: count - before.get(url, 0) for url, count in _answered(client).items()
                    }
                    yield pd.DataFrame(
                        {
                            "split": [split.number],
                            "rows": [rows],
                            "failed": [failed],
                            "seconds": [time.perf_counter() - start],
                            "answered": [json.dumps(answered)],
                        }
                    )
        finally:
            if client is not None:
                client.close()

    return run


def _untuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _frame_task(
    config: BulkConfig, keep: tuple[str, ...]
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The ``mapInPandas`` function of :func:`score_dataframe`: rows in, scored rows out."""

    def run(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        urls = _task_urls(config)
        client: DetectionClient | None = None
        try:
            for frame in frames:
                if frame.empty:
                    continue
                if client is None:
                    client = _open_client(config, urls)
                for start in range(0, len(frame), config.batch_rows):
                    chunk = frame.iloc[start : start + config.batch_rows]
                    outputs, reasons = _predictions(client, chunk[config.column], config.column)
                    scored = chunk[list(keep)].reset_index(drop=True)
                    for name in OUTPUT_COLUMNS:
                        scored[name] = pd.Series(outputs[name], dtype=object)
                    scored[ERROR_COLUMN] = pd.Series(reasons, dtype=object)
                    yield scored
        finally:
            if client is not None:
                client.close()

    return run


# --- the driver ---------------------------------------------------------------------------


def _kept_columns(names: Sequence[str], config: BulkConfig, *, with_row: bool) -> tuple[str, ...]:
    if config.column not in names:
        raise ConfigError(
            f"the input has no column {config.column!r} (columns: {list(names)}); "
            "give the image column with column=... (--column)"
        )
    keep = tuple(n for n in names if n != config.column) if config.keep is None else config.keep
    unknown = [n for n in keep if n not in names]
    if unknown:
        raise ConfigError(f"keep names columns the input lacks: {unknown} (columns: {list(names)})")
    reserved = {*OUTPUT_COLUMNS, ERROR_COLUMN} | ({ROW_COLUMN} if with_row else set())
    clash = sorted(reserved.intersection(keep))
    if clash:
        raise ConfigError(
            f"input columns {clash} would clash with the output's; leave them out with keep=... "
            "(--keep) or rename them"
        )
    return keep


def score_table(
    input: str,
    output: str | None = None,
    *,
    config: BulkConfig,
    spark: SparkSession | None = None,
    master: str | None = None,
    spark_conf: dict[str, str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BulkReport:
    """Score every row of a Parquet or CSV table of base64 images; write a folder of parts.

    Args:
        input: a file, or a folder/prefix of files of one format, local or ``s3://``.
        output: the output folder (local or ``s3://``); default
            ``<input without suffix>.scored.parquet`` next to the input.
        config: servers, model, token, batch and split sizes (:class:`BulkConfig`).
        spark: a Spark session to use; default the active one, or a new one on ``master``
            (stopped at the end only if this call started it).
        master: Spark master for a new session (``local[*]``, ``spark://host:7077``, ``yarn``,
            ``k8s://...``).
        spark_conf: settings for a new session (``spark.executor.instances`` ...).
        progress: called with ``(tasks done, tasks)`` while the job runs.

    Returns:
        A :class:`BulkReport`. Read the result with ``pandas.read_parquet(report.output)``.

    Raises:
        ConfigError: a bad input, output or setting (the message names it).
        StorageError: the input cannot be read or the output written.
        InferenceError: a task failed as a whole (server unreachable, token refused, model not
            ready), after Spark's retries.
    """
    table = _bulk_io.open_table(input, format=config.format, endpoint_url=config.s3_endpoint_url)
    target = output or _bulk_output.default_output(input)
    if "://" in target and not target.startswith("s3://"):
        raise ConfigError(f"output {target!r}: expected a local path or an s3:// URL")
    output_location = TableLocation(target, config.s3_endpoint_url)
    if output_location.path == table.location.path or any(
        path.startswith(f"{output_location.path}/") for path in table.files
    ):
        raise ConfigError(f"output {target!r} would overwrite the input {input!r}")
    input_schema = _bulk_io.read_schema(table)
    keep = _kept_columns(input_schema.names, config, with_row=True)
    schema = _output_schema(input_schema, keep, with_row=True)
    splits = _bulk_io.plan_splits(table, rows_per_split=config.rows_per_split)
    _bulk_output.prepare_output(output_location, overwrite=config.overwrite)
    logger.info(
        "scoring %s (%s, %d file(s)) in %d task(s) on %s -> %s",
        input,
        table.format,
        len(table.files),
        len(splits),
        ", ".join(config.urls),
        target,
    )

    own_session = spark is None and active_session() is None
    session = spark or spark_session(master, spark_conf)
    start = time.perf_counter()
    group = f"detstack-score-{uuid.uuid4().hex[:8]}"
    tracker = SparkProgress(session, group, len(splits), progress) if progress else None
    try:
        context = session.sparkContext
        context.setJobGroup(group, f"detstack score {input}")
        descriptors = session.createDataFrame(
            context.parallelize(
                [(json.dumps(asdict(split)),) for split in splits], max(1, len(splits))
            ),
            "split string",
        )
        task = _split_task(config, keep, schema, table.location, output_location)
        if tracker:
            tracker.start()
        try:
            summaries = descriptors.mapInPandas(task, _SUMMARY_SCHEMA).collect()
        except Exception as error:
            if isinstance(error, DetstackError):
                raise
            raise task_failure(error) from None
        finally:
            if tracker:
                tracker.stop()
                tracker.poll()
    finally:
        if own_session:
            session.stop()
    seconds = time.perf_counter() - start
    _bulk_output.mark_success(output_location)
    requests_per_url: dict[str, int] = {}
    for summary in summaries:
        for url, count in json.loads(summary["answered"]).items():
            requests_per_url[url] = requests_per_url.get(url, 0) + count
    report = BulkReport(
        output=target,
        rows=sum(s["rows"] for s in summaries),
        failed=sum(s["failed"] for s in summaries),
        splits=len(splits),
        seconds=seconds,
        requests_per_url=requests_per_url,
    )
    logger.info(
        "scored %d rows (%d failed) in %.1f s (%.1f rows/s) -> %s",
        report.rows,
        report.failed,
        report.seconds,
        report.rows_per_s,
        target,
    )
    return report


def score_dataframe(frame: SparkDataFrame, config: BulkConfig) -> SparkDataFrame:
    """Score a Spark DataFrame of base64 images; lazy, like any Spark transformation.

    The result has the kept columns (every column but the image column, or ``config.keep``),
    ``boxes``, ``labels``, ``scores`` and ``error``, one row per input row (Spark keeps no row
    order: keep an id column). One client per task, as in :func:`score_table`.

    Example:
        >>> images = spark.read.parquet("s3a://bucket/images/")           # doctest: +SKIP
        >>> score_dataframe(images, config).write.parquet("s3a://bucket/scored/")
        ...                                                                # doctest: +SKIP

    Raises:
        ConfigError: the image column or a kept column is missing, or names clash.
    """
    from pyspark.sql.types import StringType, StructField, StructType

    keep = _kept_columns(frame.columns, config, with_row=False)
    fields = [frame.schema[name] for name in keep]
    fields += [StructField(name, StringType(), True) for name in (*OUTPUT_COLUMNS, ERROR_COLUMN)]
    return frame.select(config.column, *keep).mapInPandas(
        _frame_task(config, keep), StructType(fields)
    )


def read_scored(output: str, *, s3_endpoint_url: str | None = None) -> pd.DataFrame:
    """Read a :func:`score_table` output folder into pandas, in input order (part by part).

    Raises:
        ConfigError: the folder has no ``_SUCCESS`` marker (the job did not finish).
        StorageError: it cannot be read.
    """
    return _bulk_output.read_parts(TableLocation(output, s3_endpoint_url)).to_pandas()
