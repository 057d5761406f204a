"""Read a dataset's files from a local folder or an S3 prefix, through one small interface.

The COCO loader names files relative to a dataset root (``images/0001.png``) and asks a
:class:`Storage` for their bytes; it never knows whether they come from a disk or a bucket.

* :class:`LocalStorage`: a folder.
* :class:`S3Storage`: ``s3://bucket/prefix``. Credentials, region and endpoint come from the
  standard AWS chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``,
  ``AWS_PROFILE`` and ``~/.aws/``, ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL_S3`` /
  ``AWS_ENDPOINT_URL``); ``endpoint_url`` overrides the endpoint for S3-compatible stores
  (MinIO, Ceph, moto). The prefix is listed once; every object read is cached on local disk
  under a name derived from its ETag, so later epochs (and later runs) read the disk, and a
  changed object is downloaded again. The boto3 client is created lazily in each process, so a
  storage object can be sent to DataLoader workers and DDP processes.

Example:
    >>> storage = open_storage("s3://my-bucket/datasets/shapes",
    ...                        endpoint_url="http://127.0.0.1:9000")     # doctest: +SKIP
    >>> storage.exists("annotations.json")                              # doctest: +SKIP
    True
    >>> data = storage.read_bytes("images/000001.png")                  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from detstack.atomic import atomic_write_bytes
from detstack.errors import StorageError

__all__ = [
    "LocalStorage",
    "S3Storage",
    "Storage",
    "default_cache_dir",
    "is_s3_url",
    "open_storage",
    "parse_s3_url",
]

logger = logging.getLogger(__name__)

#: Environment variable that moves the local cache of S3 objects (default ~/.cache/detstack).
CACHE_DIR_ENV = "DETSTACK_CACHE_DIR"


class Storage(Protocol):
    """Read-only access to the files under one dataset root, by relative POSIX name."""

    #: Where the root is: an absolute local path or ``s3://bucket/prefix``.
    location: str

    def url(self, name: str) -> str:
        """Full location of ``name``, for messages (a path or an ``s3://`` URL)."""
        ...

    def exists(self, name: str) -> bool:
        """Whether ``name`` is a file under the root."""
        ...

    def list_files(self, under: str = "") -> list[str]:
        """Relative names of every file below ``under`` (recursive, sorted)."""
        ...

    def read_bytes(self, name: str) -> bytes:
        """The content of ``name``.

        Raises:
            StorageError: the file does not exist or cannot be read; the message names it.
        """
        ...


def is_s3_url(source: str | os.PathLike[str]) -> bool:
    return isinstance(source, str) and source.startswith("s3://")


def parse_s3_url(url: str) -> tuple[str, str]:
    """Split ``s3://bucket/some/prefix/`` into ``("bucket", "some/prefix")``.

    Raises:
        StorageError: not an ``s3://`` URL or no bucket name.
    """
    if not is_s3_url(url):
        raise StorageError(f"expected an s3://bucket/prefix URL, got {url!r}")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not bucket:
        raise StorageError(f"S3 URL {url!r} has no bucket name; expected s3://bucket/prefix")
    return bucket, prefix.strip("/")


def default_cache_dir() -> Path:
    """``$DETSTACK_CACHE_DIR``, else ``$XDG_CACHE_HOME/detstack``, else ``~/.cache/detstack``."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "detstack"


def _clean_name(name: str) -> str:
    return str(PurePosixPath(name)).lstrip("/") if name not in ("", ".") else ""


@dataclass(frozen=True)
class LocalStorage:
    """A local folder."""

    root: Path

    @property
    def location(self) -> str:
        return str(self.root)

    def url(self, name: str) -> str:
        return str(self.root / name) if name else str(self.root)

    def exists(self, name: str) -> bool:
        return (self.root / name).is_file()

    def list_files(self, under: str = "") -> list[str]:
        base = self.root / under if under else self.root
        if not base.is_dir():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file())

    def read_bytes(self, name: str) -> bytes:
        path = self.root / name
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise StorageError(f"file not found: {path}") from None
        except OSError as error:
            raise StorageError(f"cannot read {path}: {error.strerror or error}") from None


class S3Storage:
    """An ``s3://bucket/prefix`` location, read through a local on-disk cache.

    Args:
        url: ``s3://bucket/prefix``.
        endpoint_url: an S3-compatible endpoint (MinIO, moto); ``None`` uses the AWS chain.
        cache_dir: where downloaded objects are kept (default :func:`default_cache_dir`).
    """

    def __init__(
        self, url: str, *, endpoint_url: str | None = None, cache_dir: str | Path | None = None
    ) -> None:
        self.bucket, self.prefix = parse_s3_url(url)
        self.endpoint_url = endpoint_url
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._listing: dict[str, str] | None = None  # relative name -> ETag
        self._client: Any = None
        self._client_pid: int | None = None

    # A boto3 client must not cross a fork or a pickle: each process makes its own.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client"] = None
        state["_client_pid"] = None
        return state

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def key(self, name: str) -> str:
        name = _clean_name(name)
        if not self.prefix:
            return name
        return f"{self.prefix}/{name}" if name else self.prefix

    def url(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.key(name)}"

    def _s3(self) -> Any:
        if self._client is None or self._client_pid != os.getpid():
            try:
                import boto3
                from botocore.config import Config
            except ImportError as error:  # pragma: no cover - boto3 is a dependency
                raise StorageError(f"reading s3:// datasets needs boto3 ({error})") from None
            config = Config(
                connect_timeout=10,
                read_timeout=60,
                retries={"max_attempts": 5, "mode": "standard"},
            )
            try:
                self._client = boto3.session.Session().client(
                    "s3", endpoint_url=self.endpoint_url, config=config
                )
            except Exception as error:
                raise StorageError(
                    f"cannot create an S3 client for {self.location}: {error}"
                ) from None
            self._client_pid = os.getpid()
        return self._client

    def _error(self, error: Exception, what: str) -> StorageError:
        """Turn a botocore exception into a message a user can act on."""
        from botocore.exceptions import (
            ClientError,
            EndpointConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        endpoint = self.endpoint_url or "the default AWS endpoint"
        if isinstance(error, NoCredentialsError | PartialCredentialsError):
            return StorageError(
                f"no usable AWS credentials to read {what}: set AWS_ACCESS_KEY_ID and "
                f"AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) ({error})"
            )
        if isinstance(error, EndpointConnectionError):
            return StorageError(f"cannot connect to the S3 endpoint {endpoint} to read {what}")
        if isinstance(error, ClientError):
            code = str(error.response.get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "404", "NotFound"):
                return StorageError(f"object not found: {what}")
            if code == "NoSuchBucket":
                return StorageError(f"bucket {self.bucket!r} does not exist at {endpoint}")
            if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                return StorageError(f"access denied to {what} at {endpoint} ({code})")
            return StorageError(f"S3 error {code or 'unknown'} reading {what}: {error}")
        return StorageError(f"cannot read {what} from {endpoint}: {error}")

    def _list(self) -> dict[str, str]:
        if self._listing is None:
            from botocore.exceptions import BotoCoreError, ClientError

            listing: dict[str, str] = {}
            base = f"{self.prefix}/" if self.prefix else ""
            try:
                pages = self._s3().get_paginator("list_objects_v2")
                for page in pages.paginate(Bucket=self.bucket, Prefix=base):
                    for item in page.get("Contents", []):
                        if not item["Key"].endswith("/"):
                            listing[item["Key"][len(base) :]] = str(item.get("ETag", ""))
            except (BotoCoreError, ClientError) as error:
                raise self._error(error, self.location) from None
            logger.debug("listed %d objects under %s", len(listing), self.location)
            self._listing = listing
        return self._listing

    def exists(self, name: str) -> bool:
        return _clean_name(name) in self._list()

    def list_files(self, under: str = "") -> list[str]:
        under = _clean_name(under)
        base = f"{under}/" if under else ""
        return sorted(n for n in self._list() if n.startswith(base))

    def _cache_path(self, name: str, etag: str) -> Path:
        identity = "\n".join((self.endpoint_url or "", self.bucket, self.key(name), etag))
        digest = hashlib.sha256(identity.encode()).hexdigest()
        suffix = PurePosixPath(name).suffix[:16]
        return self.cache_dir / "s3" / digest[:2] / f"{digest}{suffix}"

    def read_bytes(self, name: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        name = _clean_name(name)
        etag = self._list().get(name)
        if etag is None:
            raise StorageError(f"object not found: {self.url(name)}")
        cached = self._cache_path(name, etag)
        if cached.is_file():
            try:
                return cached.read_bytes()
            except OSError:
                pass  # unreadable cache entry: download again
        try:
            response = self._s3().get_object(Bucket=self.bucket, Key=self.key(name))
            data = response["Body"].read()
        except (BotoCoreError, ClientError) as error:
            raise self._error(error, self.url(name)) from None
        self._store(cached, data)
        return data

    def _store(self, path: Path, data: bytes) -> None:
        # Write-then-rename: concurrent readers (DDP ranks, workers) never see half a file.
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, data)
        except OSError as error:
            # The cache is an optimisation: a full or read-only disk must not stop training.
            logger.warning("cannot cache %s at %s: %s", path.name, path.parent, error)


def open_storage(
    source: str | os.PathLike[str],
    *,
    endpoint_url: str | None = None,
    cache_dir: str | Path | None = None,
) -> LocalStorage | S3Storage:
    """A :class:`Storage` for a local folder or an ``s3://bucket/prefix`` URL.

    Raises:
        StorageError: a local folder that does not exist, or a malformed S3 URL.
    """
    if is_s3_url(source):
        return S3Storage(str(source), endpoint_url=endpoint_url, cache_dir=cache_dir)
    root = Path(source).expanduser()
    if not root.is_dir():
        raise StorageError(f"dataset folder not found: {root}")
    return LocalStorage(root.resolve())
