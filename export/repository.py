"""Write a new, immutable version of a model into a Triton model repository.

Layout (see ``model_repository/README.md``)::

    <repository>/<name>/
        config.pbtxt            GPU container flavour (same as configs/gpu.pbtxt)
        configs/gpu.pbtxt       onnxruntime backend, KIND_GPU
        configs/embedded.pbtxt  python backend running onnxruntime, KIND_CPU
        warmup/                 raw uint8 CHW tensors of the latest version's samples
        <version>/model.onnx, model.py, manifest.json, samples/

Guarantees:

* **Never overwrite.** The version is the next integer after the highest existing one; the
  whole version is assembled in a hidden temporary directory inside the model directory and
  renamed into place (one atomic ``rename`` on the same file system), only if that number is
  still free. An exclusive lock file serialises concurrent exports of the same model.
* **Nothing partial.** If anything fails, the temporary directory and new warmup files are
  removed and the previous configs are restored.
* **No kill point leaves the repository inconsistent** (tested with ``kill -9`` before every
  file-system call, ``tests/export/test_repository_kill.py``). The order is: (1) stage the
  version under a hidden ``.export-*`` name; (2) write its warmup files under new names; (3)
  publish it with one ``rename``; (4) rewrite every config from all versions' manifests (label
  maps, working resizes) and the new samples (warmup), each file atomically, the ``--gpu-decode``
  sibling models first (:class:`export.gpu_decode.GpuDecodeSiblings`: versions mirrored, each
  new folder renamed into place whole, configs atomic); (5) delete the old
  warmup files. So a config only ever names versions and warmup files that exist. Killed before
  (3), the export leaves hidden ``.export-*`` entries and unreferenced warmup files, which the
  next export deletes; killed between (3) and (4), the new version is served with the previous
  configs (its label map absent) until the next export rewrites them from every manifest.
* A numeric entry that is not a directory (a stray file ``7``) is refused, naming it.

Example:
    >>> written = write_version(Path("model_repository"), "my-detection-model", content,
    ...                         ConfigOptions())                        # doctest: +SKIP
    >>> written.version, written.path                                   # doctest: +SKIP
    (3, PosixPath('model_repository/my-detection-model/3'))
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detstack.atomic import atomic_write_bytes, fsync_directory, remove_leftovers
from detstack.errors import RepositoryError
from export.gpu_decode import GpuDecodeSiblings
from export.samples import SampleImage
from export.triton_config import (
    FLAVOURS,
    ConfigOptions,
    WarmupSample,
    build_config,
    to_pbtxt,
)

__all__ = [
    "MANIFEST_NAME",
    "VersionContent",
    "WrittenVersion",
    "check_extra_files",
    "existing_versions",
    "label_maps_of",
    "validate_model_name",
    "write_version",
]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
PYTHON_MODEL_SOURCE = Path(__file__).with_name("triton_python_model.py")
_LOCK_NAME = ".detstack-export.lock"
_STAGING_PREFIX = ".export-"
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class VersionContent:
    """What goes into one version directory (the writer adds the version number)."""

    onnx_path: Path
    manifest: Mapping[str, Any]
    samples: Sequence[SampleImage]
    label_map: Mapping[int, Mapping[str, str]]
    extra_files: tuple[Path, ...] = ()


@dataclass(frozen=True)
class WrittenVersion:
    """Where the new version landed."""

    version: int
    path: Path
    model_dir: Path
    configs: tuple[Path, ...]


def validate_model_name(name: str) -> str:
    """A Triton model name that is also a safe directory name."""
    if not _NAME_PATTERN.match(name or ""):
        raise RepositoryError(
            f"invalid model name {name!r}: use 1-128 letters, digits, '-', '_' or '.', "
            "starting with a letter or digit"
        )
    return name


_RESERVED_NAMES = frozenset({"model.onnx", "model.py", MANIFEST_NAME, "samples"})


def check_extra_files(paths: Sequence[str | Path]) -> None:
    """Extra files must exist and not take the name of a file the version itself holds."""
    names = [Path(p).name for p in paths]
    problems = [f"{p} does not exist" for p in paths if not Path(p).is_file()]
    problems += [f"{n} is a name the version uses itself" for n in names if n in _RESERVED_NAMES]
    problems += [f"{n} is given twice" for n in sorted({n for n in names if names.count(n) > 1})]
    if problems:
        raise RepositoryError("cannot add extra files to the version: " + "; ".join(problems))


def existing_versions(model_dir: Path) -> list[int]:
    """Version numbers present in ``model_dir`` (numeric sub-directories), sorted."""
    if not model_dir.is_dir():
        return []
    return sorted(
        int(entry.name)
        for entry in model_dir.iterdir()
        if entry.is_dir() and entry.name.isdigit() and not entry.name.startswith("0")
    )


def resizes_of(model_dir: Path) -> dict[int, tuple[int, int]]:
    """``(min_size, max_size)`` of every version whose manifest records it."""
    resizes: dict[int, tuple[int, int]] = {}
    for version in existing_versions(model_dir):
        path = model_dir / str(version) / MANIFEST_NAME
        try:
            resize = json.loads(path.read_text(encoding="utf-8"))["export"]["resize"]
            resizes[version] = (int(resize["min_size"]), int(resize["max_size"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # versions written before the encoded input: their model.py reads none
    return resizes


def manifest_resize(manifest: Mapping[str, Any]) -> tuple[int, int] | None:
    """The ``(min_size, max_size)`` an export manifest records, if any."""
    try:
        resize = manifest["export"]["resize"]
        return int(resize["min_size"]), int(resize["max_size"])
    except (KeyError, TypeError, ValueError):
        return None


def label_maps_of(model_dir: Path) -> dict[int, dict[str, dict[str, str]]]:
    """The label map of every version that has a readable manifest."""
    maps: dict[int, dict[str, dict[str, str]]] = {}
    for version in existing_versions(model_dir):
        path = model_dir / str(version) / MANIFEST_NAME
        try:
            maps[version] = dict(json.loads(path.read_text(encoding="utf-8"))["label_map"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            logger.warning(
                "version %d has no usable %s (%s); not in the label map",
                version,
                MANIFEST_NAME,
                error,
            )
    return maps


@contextlib.contextmanager
def _locked(model_dir: Path) -> Iterator[None]:
    with open(model_dir / _LOCK_NAME, "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _write_file(path: Path, data: bytes) -> None:
    """A file inside the hidden staging folder, which is published whole by one rename."""
    with open(path, "wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())


def _replace_file(path: Path, data: bytes) -> None:
    """Replace a published file (config, warmup) atomically, readable by Triton (0644).

    The temporary name starts with the staging prefix, so one an export killed mid-write
    leaves behind is swept by :func:`_remove_stale_staging` like the staging folders.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data, mode=0o644, prefix=f"{_STAGING_PREFIX}{path.name}.")


def _remove_stale_staging(model_dir: Path) -> None:
    """Delete what an export killed outright left: hidden staging folders and temp files."""
    remove_leftovers((model_dir, model_dir / "configs", model_dir / "warmup"), _STAGING_PREFIX)


def _refuse_stray_entries(model_dir: Path) -> None:
    """A numeric name that is not a directory is no version, and would block the next one."""
    for entry in sorted(model_dir.iterdir()):
        # A directory, or a link to one (a version kept elsewhere), is a version Triton serves.
        if entry.name.isdigit() and not entry.is_dir():
            kind = "a symbolic link to no directory" if entry.is_symlink() else "not a directory"
            raise RepositoryError(
                f"{entry} is {kind}: a numeric name in a model directory is a version and must "
                "be a directory (<version>/model.onnx, manifest.json); move or remove it, then "
                "export again"
            )


def _publish(staging: Path, target: Path) -> None:
    """Rename the complete ``staging`` folder to ``target`` and make the rename durable."""
    if os.path.lexists(target):
        raise RepositoryError(
            f"{target} was created by something else during the export (not by a detstack "
            "export, which holds the lock); nothing replaced"
        )
    os.rename(staging, target)
    fsync_directory(target.parent)


def _unpublish(target: Path, model_dir: Path) -> None:
    """Take a just-published version back: hide it with one rename, then delete it."""
    hidden = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=model_dir))
    with contextlib.suppress(OSError):
        os.rename(target, hidden / "retired")
        fsync_directory(model_dir)
    shutil.rmtree(hidden, ignore_errors=True)


def _stage_version(staging: Path, version: int, content: VersionContent) -> None:
    shutil.copyfile(content.onnx_path, staging / "model.onnx")
    shutil.copyfile(PYTHON_MODEL_SOURCE, staging / "model.py")
    for extra in content.extra_files:
        shutil.copyfile(extra, staging / Path(extra).name)
    samples_dir = staging / "samples"
    samples_dir.mkdir()
    for sample in content.samples:
        _write_file(samples_dir / sample.name, sample.data)
    manifest = dict(content.manifest)
    manifest["version"] = version
    manifest["label_map"] = {str(k): dict(v) for k, v in content.label_map.items()}
    if content.extra_files:
        manifest["extra_files"] = sorted(Path(p).name for p in content.extra_files)
    _write_file(
        staging / MANIFEST_NAME,
        (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode("utf-8"),
    )
    # mkdtemp makes the directory 0700; Triton (possibly another user in a container) must read
    # it: directories 0755, files 0644, as a plain copy would be.
    for path in (staging, *staging.rglob("*")):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    fsync_directory(samples_dir)
    fsync_directory(staging)


def _write_warmup(
    model_dir: Path, version: int, samples: Sequence[SampleImage]
) -> tuple[list[WarmupSample], list[Path]]:
    warmup_dir = model_dir / "warmup"
    warmup_dir.mkdir(exist_ok=True)
    entries, written = [], []
    for index, sample in enumerate(samples):
        file_name = f"v{version}-sample{index}.raw"
        chw = np.ascontiguousarray(sample.pixels.transpose(2, 0, 1), dtype=np.uint8)
        path = warmup_dir / file_name
        _replace_file(path, chw.tobytes())
        written.append(path)
        # Triton's warmup format for one BYTES element: 4-byte little-endian length, then bytes.
        encoded_name = f"v{version}-sample{index}.bytes"
        encoded_path = warmup_dir / encoded_name
        _replace_file(encoded_path, struct.pack("<I", len(sample.data)) + sample.data)
        written.append(encoded_path)
        entries.append(
            WarmupSample(
                f"sample{index}",
                file_name,
                int(chw.shape[1]),
                int(chw.shape[2]),
                encoded_file_name=encoded_name,
            )
        )
    return entries, written


def _config_paths(model_dir: Path) -> dict[str, list[Path]]:
    return {
        "gpu": [model_dir / "configs" / "gpu.pbtxt", model_dir / "config.pbtxt"],
        "embedded": [model_dir / "configs" / "embedded.pbtxt"],
    }


def write_version(
    repository: Path, name: str, content: VersionContent, options: ConfigOptions
) -> WrittenVersion:
    """Add ``content`` as the next version of model ``name`` in ``repository``.

    Raises:
        RepositoryError: the repository cannot be written, or the version appeared meanwhile.
    """
    validate_model_name(name)
    model_dir = Path(repository) / name
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RepositoryError(f"cannot create {model_dir}: {error.strerror or error}") from None
    with _locked(model_dir):
        _remove_stale_staging(model_dir)
        _refuse_stray_entries(model_dir)
        # <name>-gate, -decode, -detector of the GPU flavour's ensemble: see export.gpu_decode
        siblings = GpuDecodeSiblings(Path(repository), name, staging_prefix=_STAGING_PREFIX)
        if options.gpu_decode:
            siblings.check()
        else:
            siblings.warn_if_left_behind()
            siblings = None
        versions = existing_versions(model_dir)
        version = (versions[-1] if versions else 0) + 1
        target = model_dir / str(version)
        staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=model_dir))
        config_paths = _config_paths(model_dir)
        backups = {
            path: (path.read_bytes() if path.exists() else None)
            for paths in config_paths.values()
            for path in paths
        }
        new_warmup: list[Path] = []
        published = False
        try:
            # 1. The version, complete, under a hidden name Triton ignores.
            _stage_version(staging, version, content)
            # 2. Its warmup files, under new names no config refers to yet.
            warmup, new_warmup = _write_warmup(model_dir, version, content.samples)
            fsync_directory(model_dir / "warmup")
            # 3. Publish: one rename. From here on the version exists, so configs may name it.
            _publish(staging, target)
            published = True
            # 4. Configs from every version's manifest, each file replaced atomically.
            label_maps = label_maps_of(model_dir)
            label_maps[version] = {str(k): dict(v) for k, v in content.label_map.items()}
            resizes = resizes_of(model_dir)
            resize = manifest_resize(content.manifest)
            if resize is not None:
                resizes[version] = resize
            if siblings is not None:  # before <name>'s ensemble config names them
                siblings.write(
                    versions=existing_versions(model_dir),
                    label_maps=label_maps,
                    options=options,
                    warmup=warmup,
                )
            for flavour in FLAVOURS:
                text = to_pbtxt(
                    build_config(
                        flavour,
                        name=name,
                        label_maps=label_maps,
                        warmup=warmup,
                        options=options,
                        resizes=resizes,
                    )
                ).encode("utf-8")
                for path in config_paths[flavour]:
                    _replace_file(path, text)
            fsync_directory(model_dir / "configs")
            fsync_directory(model_dir)
        except BaseException as error:
            # Reverse order: configs first (they then name only versions that stay), then the
            # version, then its warmup files (no config names them any more).
            if siblings is not None:
                siblings.rollback()
            for path, data in backups.items():
                with contextlib.suppress(OSError):
                    if data is None:
                        path.unlink(missing_ok=True)
                    else:
                        _replace_file(path, data)
            if published:
                _unpublish(target, model_dir)
            shutil.rmtree(staging, ignore_errors=True)
            for path in new_warmup:
                path.unlink(missing_ok=True)
            if isinstance(error, OSError):
                raise RepositoryError(
                    f"cannot write version {version} of {model_dir}: {error}; "
                    "the repository was left as it was"
                ) from error
            raise
        # 5. Only now, with every config naming the new files, the old warmup files go (and any
        # left by an export killed before its configs were written).
        keep = {w.file_name for w in warmup} | {w.encoded_file_name for w in warmup}
        for stale in (*model_dir.glob("warmup/*.raw"), *model_dir.glob("warmup/*.bytes")):
            if stale.name not in keep:
                stale.unlink(missing_ok=True)
        if siblings is not None:
            siblings.finish()
    logger.info("wrote %s", target)
    return WrittenVersion(
        version=version,
        path=target,
        model_dir=model_dir,
        configs=(
            *(p for paths in config_paths.values() for p in paths),
            *(siblings.config_paths if siblings is not None else ()),
        ),
    )
