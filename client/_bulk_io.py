"""Tables of base64 images for bulk scoring: find them, cut them into splits, read, write.

:mod:`client.bulk` schedules the work on Spark; this module is the storage side, in plain
pyarrow so the same code reads a local file and an ``s3://`` object, on the driver and on every
worker, without Hadoop's S3 connector (whose jars a cluster may not have and this machine cannot
download).

* :func:`plan_splits` (driver): the table's files, and for Parquet its row groups from the file
  footers only, grouped into :class:`Split` s of about ``rows_per_split`` rows. A CSV file cannot
  be cut without reading it, so each CSV file is one split.
* :func:`read_split` (worker): the split's rows as Arrow record batches of at most
  ``batch_rows`` rows, with the row's position in the table.
* :class:`PartWriter` (worker): ``<output>/part-<split>.parquet``, written batch by batch (bounded
  memory), renamed into place at the end on a local disk (an S3 object appears whole on close).

Example:
    >>> table = open_table("s3://bucket/images.parquet", endpoint_url="http://127.0.0.1:9000")
    ...                                                                  # doctest: +SKIP
    >>> splits = plan_splits(table, rows_per_split=5000)                 # doctest: +SKIP
"""

from __future__ import annotations

import os
import uuid
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
    "SUCCESS_MARKER",
    "PartWriter",
    "Split",
    "Table",
    "TableLocation",
    "default_output",
    "mark_success",
    "open_table",
    "plan_splits",
    "prepare_output",
    "read_parts",
    "read_schema",
    "read_split",
]

#: Input formats, by file suffix.
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
#: Marker written into the output folder once every split is written (Spark's convention).
SUCCESS_MARKER = "_SUCCESS"
_PART_PREFIX = "part-"
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


def _storage_error(error: Exception, what: str) -> StorageError:
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
        raise _storage_error(error, f"cannot read {url!r}") from None
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
        raise _storage_error(error, f"cannot list {url!r}") from None
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
        raise _storage_error(error, f"{path}: cannot read its columns") from None


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
            raise _storage_error(error, f"{path}: not a readable Parquet file") from None
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
        raise _storage_error(error, f"{split.path}: cannot read rows from {position}") from None


def _rebatch(reader: pacsv.CSVStreamingReader, batch_rows: int) -> Iterator[pa.RecordBatch]:
    for batch in reader:
        for start in range(0, batch.num_rows, batch_rows):
            yield batch.slice(start, batch_rows)


def default_output(url: str) -> str:
    """``<input without its suffix>.scored.parquet``, next to the input (a folder of parts)."""
    stripped = url.rstrip("/")
    name = stripped.rsplit("/", 1)[-1]
    stem = name[: -len(Path(name).suffix)] if Path(name).suffix.lower() in FORMATS else name
    return f"{stripped[: len(stripped) - len(name)]}{stem}.scored.parquet"


def _ours(name: str) -> bool:
    return name == SUCCESS_MARKER or (name.startswith(_PART_PREFIX) and name.endswith(".parquet"))


def prepare_output(location: TableLocation, *, overwrite: bool) -> None:
    """Make sure the output folder is empty (creating it), or holds only an older result.

    With ``overwrite``, the parts and marker of an earlier run are deleted; a folder holding
    anything else is never touched.

    Raises:
        ConfigError: the output is a file, or holds files and ``overwrite`` is off, or holds
            files this module did not write.
        StorageError: it cannot be listed, cleared or created.
    """
    filesystem = location.filesystem()
    try:
        info = filesystem.get_file_info(location.path)
        if info.type == pafs.FileType.File:
            raise ConfigError(f"output {location.url!r} is a file; expected a folder (or none)")
        existing = []
        if info.type == pafs.FileType.Directory:
            existing = [
                e.path
                for e in filesystem.get_file_info(pafs.FileSelector(location.path, recursive=True))
                if e.type == pafs.FileType.File
            ]
        if existing and not overwrite:
            raise ConfigError(
                f"output {location.url!r} already holds {len(existing)} file(s); "
                "choose another output or pass overwrite=True (--overwrite)"
            )
        foreign = [p for p in existing if not _ours(Path(p).name)]
        if foreign:
            raise ConfigError(
                f"output {location.url!r} holds files detstack did not write "
                f"({', '.join(Path(p).name for p in foreign[:3])}); not overwriting it"
            )
        for path in existing:
            filesystem.delete_file(path)
        filesystem.create_dir(location.path, recursive=True)
    except (OSError, pa.ArrowException) as error:
        raise _storage_error(error, f"cannot prepare output {location.url!r}") from None


def mark_success(location: TableLocation) -> None:
    """Write the empty ``_SUCCESS`` marker: every part is in place."""
    filesystem = location.filesystem()
    try:
        with filesystem.open_output_stream(f"{location.path}/{SUCCESS_MARKER}"):
            pass
    except (OSError, pa.ArrowException) as error:
        raise _storage_error(error, f"cannot write {location.url}/{SUCCESS_MARKER}") from None


def read_parts(location: TableLocation) -> pa.Table:
    """Every part of a finished output folder, concatenated in part order (= input order).

    Raises:
        ConfigError: no ``_SUCCESS`` marker (the job did not finish).
        StorageError: a part cannot be read.
    """
    filesystem = location.filesystem()
    try:
        marker = filesystem.get_file_info(f"{location.path}/{SUCCESS_MARKER}")
        if marker.type != pafs.FileType.File:
            raise ConfigError(
                f"{location.url!r} has no {SUCCESS_MARKER}: the scoring job did not finish"
            )
        parts = sorted(
            e.path
            for e in filesystem.get_file_info(pafs.FileSelector(location.path))
            if e.type == pafs.FileType.File
            and _ours(Path(e.path).name)
            and Path(e.path).name != SUCCESS_MARKER
        )
        tables = [pq.read_table(filesystem.open_input_file(path)) for path in parts]
    except (OSError, pa.ArrowException) as error:
        raise _storage_error(error, f"cannot read {location.url!r}") from None
    return pa.concat_tables(tables) if tables else pa.table({})


class PartWriter:
    """Write one split's results as ``<output>/part-NNNNN.parquet``, batch by batch.

    A task that Spark runs again writes the same part again, so a retried split never
    duplicates rows. Locally the file is written under a temporary name and renamed at close.
    """

    def __init__(self, output: TableLocation, split: int, schema: pa.Schema) -> None:
        self._filesystem = output.filesystem()
        self.path = f"{output.path}/{_PART_PREFIX}{split:05d}.parquet"
        self._local = not output.is_s3
        self._target = f"{self.path}.{uuid.uuid4().hex}.tmp" if self._local else self.path
        try:
            self._stream = self._filesystem.open_output_stream(self._target)
            self._writer = pq.ParquetWriter(self._stream, schema)
        except (OSError, pa.ArrowException) as error:
            raise _storage_error(error, f"cannot write {self.path}") from None

    def write(self, batch: pa.RecordBatch) -> None:
        try:
            self._writer.write_batch(batch)
        except (OSError, pa.ArrowException) as error:
            raise _storage_error(error, f"cannot write {self.path}") from None

    def close(self) -> None:
        """Finish the file and put it in place."""
        try:
            self._writer.close()
            self._stream.close()
            if self._local:
                self._filesystem.move(self._target, self.path)
        except (OSError, pa.ArrowException) as error:
            raise _storage_error(error, f"cannot write {self.path}") from None

    def abort(self) -> None:
        """Drop a half-written local file (best effort).

        On S3 a stream cannot be abandoned without completing the upload, so a partial part may
        stay there; the job then fails before writing ``_SUCCESS``, or a retry replaces it.
        """
        try:
            self._writer.close()
            self._stream.close()
            if self._local:
                self._filesystem.delete_file(self._target)
        except (OSError, pa.ArrowException):
            pass
