"""The output folder of bulk scoring: one Parquet part per split, then a ``_SUCCESS`` marker.

* :class:`PartWriter` (worker): ``<output>/part-<split>.parquet``, written batch by batch (bounded
  memory), renamed into place at the end on a local disk (an S3 object appears whole on close).
* :func:`prepare_output` / :func:`mark_success` (driver): an empty folder (or only an older
  result of ours, with ``overwrite``) before the job, the marker after it.
* :func:`read_parts`: every part, in split order, once the marker is there.

Example:
    >>> default_output("s3://bucket/images.parquet")
    's3://bucket/images.scored.parquet'
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from client._bulk_io import FORMATS, TableLocation, storage_error
from detstack.errors import ConfigError

__all__ = [
    "SUCCESS_MARKER",
    "PartWriter",
    "default_output",
    "mark_success",
    "prepare_output",
    "read_parts",
]

#: Marker written into the output folder once every split is written (Spark's convention).
SUCCESS_MARKER = "_SUCCESS"
_PART_PREFIX = "part-"


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
        raise storage_error(error, f"cannot prepare output {location.url!r}") from None


def mark_success(location: TableLocation) -> None:
    """Write the empty ``_SUCCESS`` marker: every part is in place."""
    filesystem = location.filesystem()
    try:
        with filesystem.open_output_stream(f"{location.path}/{SUCCESS_MARKER}"):
            pass
    except (OSError, pa.ArrowException) as error:
        raise storage_error(error, f"cannot write {location.url}/{SUCCESS_MARKER}") from None


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
        raise storage_error(error, f"cannot read {location.url!r}") from None
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
            raise storage_error(error, f"cannot write {self.path}") from None

    def write(self, batch: pa.RecordBatch) -> None:
        try:
            self._writer.write_batch(batch)
        except (OSError, pa.ArrowException) as error:
            raise storage_error(error, f"cannot write {self.path}") from None

    def close(self) -> None:
        """Finish the file and put it in place."""
        try:
            self._writer.close()
            self._stream.close()
            if self._local:
                self._filesystem.move(self._target, self.path)
        except (OSError, pa.ArrowException) as error:
            raise storage_error(error, f"cannot write {self.path}") from None

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
