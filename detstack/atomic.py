"""Write a file so that every reader sees either its old content or its new one, never half.

Checkpoints, S3 cache entries, downloaded weights, metrics, run records and the Triton
repository's configs are all read by another process (a DDP rank, Triton, the next stage, a
resumed run) that may start while the writer is still running, or after the writer was killed.
Every one of them is written here, one way:

1. a temporary file **in the same directory** (so the final rename never crosses a file
   system), hidden (``.<name>.<random>.tmp``: no ``*.pt`` glob or model scanner picks it up);
2. the content written and ``fsync``-ed (the data is on disk before the name points at it);
3. ``os.replace`` onto the target (atomic on POSIX), then the directory ``fsync``-ed (the
   rename itself survives a power cut);
4. on **any** failure (an exception, ``KeyboardInterrupt``) the temporary file is removed and
   the previous file, if there was one, is left untouched.

**File mode.** ``tempfile.mkstemp`` creates its file ``0600``; renamed as is, a checkpoint or a
config would be private to its writer, which breaks a Triton (or a colleague) running as another
user. By default the file gets the mode a plain ``open(path, "w")`` would give it,
``0666 & ~umask``: the user's umask is the one policy a user already controls for every file a
process writes, and an atomic write should not be more private or more public than a plain one.
``mode=`` sets an exact mode instead, for files whose readers are known to be other users (the
model repository, which Triton in a container reads).

Example:
    >>> atomic_write_json(Path("run.json"), {"status": "ok"})              # doctest: +SKIP
    >>> with atomic_writer(Path("last.pt")) as stream:                       # doctest: +SKIP
    ...     torch.save(state, stream)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "atomic_replace_with_link",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "atomic_writer",
    "current_umask",
    "fsync_directory",
    "remove_leftovers",
]

logger = logging.getLogger(__name__)

_FILE_MODE = 0o666  # what open() asks for before the umask


def current_umask() -> int:
    """The process umask, read without changing it.

    ``os.umask`` can only be read by setting it, which races with threads creating files at the
    same moment; Linux shows it in ``/proc/self/status`` (4.7+). Elsewhere it falls back to the
    set-and-restore.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make the entries of ``directory`` durable (a rename into it survives a power cut)."""
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


@contextlib.contextmanager
def atomic_writer(
    path: str | os.PathLike[str], *, mode: int | None = None, prefix: str | None = None
) -> Iterator[BinaryIO]:
    """A binary stream whose content replaces ``path`` when the ``with`` block ends normally.

    For writers that stream into a file (``torch.save``, a download). If the block raises, the
    temporary file is removed, ``path`` is left as it was, and the exception propagates.

    Args:
        path: the file to write; its directory must exist.
        mode: exact permission bits of the new file; ``None``: ``0666 & ~umask``, as ``open()``.
        prefix: name prefix of the temporary file (default ``.<name>.``), for a writer that
            sweeps up what a killed run left (the model repository's ``.export-*``).
    """
    target = Path(path)
    handle, temporary = tempfile.mkstemp(
        prefix=prefix if prefix is not None else f".{target.name}.",
        suffix=".tmp",
        dir=target.parent,
    )
    try:
        os.fchmod(handle, mode if mode is not None else _FILE_MODE & ~current_umask())
        with os.fdopen(handle, "wb") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    fsync_directory(target.parent)


def atomic_write_bytes(
    path: str | os.PathLike[str], data: bytes, *, mode: int | None = None, prefix: str | None = None
) -> None:
    """Replace ``path`` with ``data`` atomically (see :func:`atomic_writer` for the arguments)."""
    with atomic_writer(path, mode=mode, prefix=prefix) as stream:
        stream.write(data)


def atomic_write_text(
    path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8", mode: int | None = None
) -> None:
    """Replace ``path`` with ``text`` atomically, encoded (UTF-8 by default, not the locale's)."""
    atomic_write_bytes(path, text.encode(encoding), mode=mode)


def atomic_write_json(
    path: str | os.PathLike[str],
    value: Any,
    *,
    indent: int | None = 2,
    sort_keys: bool = False,
    default: Callable[[Any], Any] | None = None,
    mode: int | None = None,
) -> None:
    """Replace ``path`` with ``value`` as UTF-8 JSON and a final newline, atomically.

    Args:
        indent: spaces per level; ``None``: one compact line (no spaces after separators).
        default: called for values JSON cannot hold (``str`` for paths and dates).
    """
    separators = (",", ":") if indent is None else None
    text = json.dumps(
        value, indent=indent, sort_keys=sort_keys, default=default, separators=separators
    )
    atomic_write_text(path, text + "\n", mode=mode)


def atomic_replace_with_link(
    source: str | os.PathLike[str], target: str | os.PathLike[str]
) -> None:
    """Make ``target`` name the same content as ``source``, atomically.

    A hard link (no copy of a large checkpoint) under a temporary name, renamed onto
    ``target``; where a hard link is impossible (another file system, a file system without
    links) the content is copied through :func:`atomic_writer`. ``source`` is expected to be
    complete and synced already (written by :func:`atomic_writer`).
    """
    target = Path(target)
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    try:
        os.link(source, temporary)
    except OSError:
        with open(source, "rb") as original, atomic_writer(target) as stream:
            shutil.copyfileobj(original, stream)
        return
    try:
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(target.parent)


def remove_leftovers(folders: Iterable[Path], prefix: str) -> None:
    """Delete the entries of ``folders`` whose names start with ``prefix``.

    What a writer killed outright leaves behind: its hidden staging folders and temporary
    files, named with one prefix so that the next writer finds them. A missing folder is
    skipped; a link is removed, never followed.
    """
    for folder in folders:
        for entry in Path(folder).glob(f"{prefix}*"):
            logger.warning("removing %s left by an interrupted export", entry)
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
