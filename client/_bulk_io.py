"""Tables of base64 images for bulk scoring: find them, cut them into splits, read them.

:mod:`client.bulk` schedules the work on Spark; this module is the storage side, in plain
pyarrow so the same code reads a local file and an ``s3://`` object, on the driver and on every
worker, without Hadoop's S3 connector (whose jars a cluster may not have and this machine cannot
download).

* :func:`plan_splits` (driver): the table's files, and for Parquet its row groups from the file
  footers only, grouped into :class:`Split` s of about ``rows_per_split`` rows. A CSV file cannot
  be cut without reading it, so each CSV file is one split.
* :func:`read_split` (worker): the split's rows as Arrow record batches of at most
  ``batch_rows`` rows, with the row's position in the table.

The output folder's side (parts, the ``_SUCCESS`` marker) is :mod:`client._bulk_output`.

Example:
    >>> table = open_table("s3://bucket/images.parquet", endpoint_url="http://127.0.0.1:9000")
    ...                                                                  # doctest: +SKIP
    >>> splits = plan_splits(table, rows_per_split=5000)                 # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from detstack.errors import ConfigError, StorageError

__all__ = [
    "FORMATS",
    "Split",
    "Table",
    "TableLocation",
    "open_table",
    "plan_splits",
    "read_schema",
    "read_split",
]

#: Input formats, by file suffix.
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
#: pyarrow reads CSV in blocks that must hold whole rows: a CSV row (a base64 photo) is at most
#: this long. Parquet has no such limit.
_CSV_BLOCK_BYTES = 64 * 2**20


@dataclass(frozen=True)
class TableLocation:
    """Where a table lives: a local path or ``s3://bucket/key``, and how to reach it.

    Attributes:
        url: what the user gave (a file, or a folder/prefix of files of one format).
        endpoint_url: an S3-compatible endpoint (MinIO, Ceph, moto), ``None`` for AWS or the
            ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL`` variables.
    """

    url: str
    endpoint_url: str | None = None

    @property
    def is_s3(self) -> bool:
        return self.url.startswith("s3://")

    @property
    def path(self) -> str:
        """The path as pyarrow's file system wants it (``bucket/key`` on S3, absolute locally)."""
        if self.is_s3:
            return self.url[len("s3://") :].strip("/")
        return str(Path(self.url).expanduser().resolve())

    def filesystem(self) -> pafs.FileSystem:
        """A pyarrow file system for this location (built on each worker, never shipped)."""
        if not self.is_s3:
            return pafs.LocalFileSystem()
        endpoint = (
            self.endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        )
        options: dict[str, object] = {}
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            options["region"] = region
        if endpoint:
            parts = urlsplit(endpoint)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ConfigError(
                    f"S3 endpoint {endpoint!r} is not an http:// or https:// URL with a host"
                )
            options["endpoint_override"] = parts.netloc
            options["scheme"] = parts.scheme
        return pafs.S3FileSystem(**options)

    def child(self, name: str) -> TableLocation:
        """The location of ``name`` inside this folder/prefix."""
        return TableLocation(f"{self.url.rstrip('/')}/{name}", self.endpoint_url)


@dataclass(frozen=True)
class Split:
    """One unit of work: a file, or some row groups of a Parquet file.

    Attributes:
        number: position in the plan (names the output part).
        path: the file, as :attr:`TableLocation.path` spells it.
        format: ``"parquet"`` or ``"csv"``.
        row_groups: the Parquet row groups to read (empty for CSV: the whole file).
        first_row: position in the whole table of the split's first row.
        rows: how many rows it holds (``-1`` for CSV: not known before reading).
    """

    number: int
    path: str
    format: str
    row_groups: tuple[int, ...] = ()
    first_row: int = 0
    rows: int = -1


@dataclass(frozen=True)
class Table:
    """A table found by :func:`open_table`."""

    location: TableLocation
    format: str
    files: tuple[str, ...]


def _format_of(name: str, given: str | None) -> str | None:
    if given is not None:
        return given
    return FORMATS.get(Path(name).suffix.lower())


def storage_error(error: Exception, what: str) -> StorageError:
    """A storage failure as the one StorageError type, naming what was being done."""
    return StorageError(f"{what}: {error}")


def open_table(url: str, *, format: str | None = None, endpoint_url: str | None = None) -> Table:
    """Find the files of a Parquet or CSV table (a file, or a folder/prefix of such files).

    Args:
        url: a local path or ``s3://bucket/key``.
        format: ``"parquet"`` or ``"csv"``; default from the suffix (``.parquet``, ``.pq``,
            ``.csv``).
        endpoint_url: an S3-compatible endpoint (see :class:`TableLocation`).

    Raises:
        ConfigError: an unknown scheme or format, or a folder with no file of the format.
        StorageError: the location cannot be read.
    """
    if format is not None and format not in set(FORMATS.values()):
        raise ConfigError(f"format must be 'parquet' or 'csv', got {format!r}")
    if "://" in url and not url.startswith("s3://"):
        raise ConfigError(
            f"input {url!r}: only local paths and s3:// URLs are read here; for hdfs://, "
            "s3a://, gs://, ... read the table with spark.read and call score_dataframe()"
        )
    location = TableLocation(url, endpoint_url)
    filesystem = location.filesystem()
    try:
        info = filesystem.get_file_info(location.path)
    except (OSError, pa.ArrowException) as error:
        raise storage_error(error, f"cannot read {url!r}") from None
    if info.type == pafs.FileType.File:
        chosen = _format_of(info.path, format)
        if chosen is None:
            raise ConfigError(
                f"input {url!r}: cannot tell the format from the suffix {Path(url).suffix!r}; "
                f"expected one of {', '.join(FORMATS)} or give format='parquet'|'csv'"
            )
        return Table(location, chosen, (info.path,))
    if info.type != pafs.FileType.Directory:
        raise ConfigError(f"input {url!r} does not exist (expected a file or a folder of files)")
    try:
        entries = filesystem.get_file_info(pafs.FileSelector(location.path, recursive=True))
    except (OSError, pa.ArrowException) as error:
        raise storage_error(error, f"cannot list {url!r}") from None
    files = sorted(
        e.path
        for e in entries
        if e.type == pafs.FileType.File and not Path(e.path).name.startswith(("_", "."))
    )
    formats = {_format_of(name, format) for name in files} - {None}
    if format is None and len(formats) > 1:
        raise ConfigError(
            f"input folder {url!r} mixes formats {sorted(formats)}; give format='parquet'|'csv'"
        )
    chosen = format or (formats.pop() if formats else None)
    files = [name for name in files if _format_of(name, format) == chosen]
    if chosen is None or not files:
        raise ConfigError(
            f"input folder {url!r} holds no {' or '.join(FORMATS)} file"
            if format is None
            else f"input folder {url!r} holds no file"
        )
    return Table(location, chosen, tuple(files))


def read_schema(table: Table) -> pa.Schema:
    """The table's columns and types, from its first file (every CSV column is text).

    Raises:
        StorageError: the file cannot be read.
    """
    filesystem = table.location.filesystem()
    path = table.files[0]
    try:
        if table.format == "parquet":
            return pq.read_schema(filesystem.open_input_file(path))
        with filesystem.open_input_stream(path) as stream:
            names = pacsv.open_csv(
                stream, read_options=pacsv.ReadOptions(block_size=_CSV_BLOCK_BYTES)
            ).schema.names
        return pa.schema([pa.field(name, pa.string()) for name in names])
    except (OSError, pa.ArrowException) as error:
        raise storage_error(error, f"{path}: cannot read its columns") from None


def plan_splits(table: Table, *, rows_per_split: int) -> list[Split]:
    """Cut the table into splits of about ``rows_per_split`` rows (reads footers only).

    Consecutive row groups of one Parquet file are grouped until they reach
    ``rows_per_split``; a larger row group is a split by itself. Each CSV file is one split.

    Raises:
        ConfigError: ``rows_per_split`` is not positive.
        StorageError: a file is not a readable Parquet file.
    """
    if rows_per_split < 1:
        raise ConfigError(f"rows_per_split must be at least 1, got {rows_per_split}")
    if table.format == "csv":
        return [Split(i, path, "csv") for i, path in enumerate(table.files)]
    filesystem = table.location.filesystem()
    splits: list[Split] = []
    first_row = 0
    for path in table.files:
        try:
            metadata = pq.ParquetFile(filesystem.open_input_file(path)).metadata
        except (OSError, pa.ArrowException) as error:
            raise storage_error(error, f"{path}: not a readable Parquet file") from None
        groups: list[int] = []
        rows = 0
        for group in range(metadata.num_row_groups):
            groups.append(group)
            rows += metadata.row_group(group).num_rows
            if rows >= rows_per_split:
                splits.append(Split(len(splits), path, "parquet", tuple(groups), first_row, rows))
                first_row += rows
                groups, rows = [], 0
        if groups:
            splits.append(Split(len(splits), path, "parquet", tuple(groups), first_row, rows))
            first_row += rows
    return splits


def _csv_reader(filesystem: pafs.FileSystem, path: str) -> pacsv.CSVStreamingReader:
    """Every CSV column as text: CSV has no types, and inferring them per block can fail."""
    read = pacsv.ReadOptions(block_size=_CSV_BLOCK_BYTES)
    with filesystem.open_input_stream(path) as stream:
        names = pacsv.open_csv(stream, read_options=read).schema.names
    convert = pacsv.ConvertOptions(
        column_types={name: pa.string() for name in names}, strings_can_be_null=True
    )
    return pacsv.open_csv(
        filesystem.open_input_stream(path), read_options=read, convert_options=convert
    )


def read_split(
    location: TableLocation, split: Split, *, batch_rows: int
) -> Iterator[tuple[int, pa.RecordBatch]]:
    """Yield ``(position of the first row in the table, batch)`` for the split's rows.

    For a CSV split the positions count from the file's first row (a CSV table of several
    files numbers each file from 0: their row counts are not known before reading).

    Raises:
        StorageError: the file cannot be read or parsed.
    """
    filesystem = location.filesystem()
    position = split.first_row
    try:
        if split.format == "parquet":
            parquet = pq.ParquetFile(filesystem.open_input_file(split.path))
            batches: Iterator[pa.RecordBatch] = parquet.iter_batches(
                batch_size=batch_rows, row_groups=list(split.row_groups)
            )
        else:
            batches = _rebatch(_csv_reader(filesystem, split.path), batch_rows)
        for batch in batches:
            yield position, batch
            position += batch.num_rows
    except (OSError, pa.ArrowException) as error:
        raise storage_error(error, f"{split.path}: cannot read rows from {position}") from None


def _rebatch(reader: pacsv.CSVStreamingReader, batch_rows: int) -> Iterator[pa.RecordBatch]:
    for batch in reader:
        for start in range(0, batch.num_rows, batch_rows):
            yield batch.slice(start, batch_rows)
