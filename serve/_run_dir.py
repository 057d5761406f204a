"""The run folder of an embedded server: private, never planted in advance, never reused blindly.

The python backend's interpreter runs every ``.pth`` file in the site-packages of the small
virtual environment we build for it (see :mod:`serve._launch`). A folder that someone else can
write to, or one they created before us under a name they could guess, would let them run code
as the user who serves. So:

* a folder we make is made by :func:`tempfile.mkdtemp` (a random name, created exclusively, mode
  0700);
* a folder the user names (``--run-dir``) is created 0700 if it is missing; if it exists it must
  be a directory owned by the current user that neither group nor others may write, inside a
  parent that others cannot rename it out of (world-writable without the sticky bit);
* the launch files (backend links, python environment) go into a new ``launch-*`` folder made by
  ``mkdtemp`` inside it at every start, so nothing found in the run folder is ever executed;
* the log is opened without following a symbolic link, created 0600.

Example:
    >>> run_dir = private_run_dir(Path("runs/serve"))        # doctest: +SKIP
    >>> launch_dir = new_launch_dir(run_dir)                 # doctest: +SKIP
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from detstack.errors import ServeError

__all__ = ["new_launch_dir", "new_run_dir", "open_log", "private_run_dir"]

_RUN_PREFIX = "detstack-serve-"
_LAUNCH_PREFIX = "launch-"


def new_run_dir() -> Path:
    """A new private run folder in the system temp dir (random name, created exclusively, 0700)."""
    return Path(tempfile.mkdtemp(prefix=_RUN_PREFIX))


def _refusal(path: Path, why: str) -> ServeError:
    return ServeError(
        f"refusing run folder {path}: {why}; the python backend runs code found in it, so it must "
        "be a directory of yours that only you can write (chmod go-w), or give a new path with "
        "--run-dir (or none: a new private folder is made)"
    )


def _check_owned_and_private(path: Path) -> None:
    info = os.stat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise _refusal(path, "it is not a directory")
    if info.st_uid != os.geteuid():
        raise _refusal(path, f"it is owned by uid {info.st_uid}, not by you (uid {os.geteuid()})")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise _refusal(
            path, f"group or others may write to it (mode {stat.S_IMODE(info.st_mode):04o})"
        )
    parent = os.stat(path.parent)
    if parent.st_mode & stat.S_IWOTH and not parent.st_mode & stat.S_ISVTX:
        raise _refusal(
            path,
            f"its parent {path.parent} is world-writable without the sticky bit (anyone can "
            "replace the folder)",
        )


def private_run_dir(path: Path) -> Path:
    """The user-given run folder, created 0700 when missing, checked when it exists.

    Returns:
        The folder's resolved path.

    Raises:
        ServeError: the folder exists but is not a directory, is not owned by the current user,
            is writable by group or others, or lives in a world-writable, non-sticky parent; or it
            cannot be created.
    """
    path = Path(path).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as error:
        raise ServeError(f"cannot create run folder {path}: {error.strerror or error}") from None
    real = path.resolve()
    try:
        _check_owned_and_private(real)
    except OSError as error:
        raise ServeError(f"cannot inspect run folder {path}: {error.strerror or error}") from None
    return real


def new_launch_dir(run_dir: Path) -> Path:
    """A fresh folder for this start's launch files (random name, created exclusively, 0700)."""
    try:
        return Path(tempfile.mkdtemp(prefix=_LAUNCH_PREFIX, dir=run_dir))
    except OSError as error:
        raise ServeError(
            f"cannot create the launch folder in {run_dir}: {error.strerror or error}"
        ) from None


def open_log(path: Path) -> int:
    """Open (or create, 0600) the log for appending, refusing a symlink or a non-regular file.

    Returns:
        An ``O_APPEND`` file descriptor the caller closes.
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        handle = os.open(path, flags, 0o600)
    except OSError as error:
        raise ServeError(
            f"cannot open the server log {path}: {error.strerror or error} (a symbolic link or "
            "an unwritable file there is refused)"
        ) from None
    info = os.fstat(handle)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
        os.close(handle)
        raise ServeError(f"cannot use the server log {path}: not a regular file of yours")
    os.set_blocking(handle, True)
    return handle
