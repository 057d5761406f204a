"""What a bulk scoring job is given and what it reports: :class:`BulkConfig`, :class:`BulkReport`.

Example:
    >>> BulkConfig(urls=("triton-0:8001", "triton-1:8001")).client_config(("triton-0:8001",)).url
    'triton-0:8001'
"""

from __future__ import annotations

from dataclasses import dataclass, field

from client._config import ClientConfig
from client.codec import IMAGE_COLUMN
from detstack.contract import DEFAULT_MODEL_NAME
from detstack.errors import ConfigError

__all__ = ["BulkConfig", "BulkReport"]


@dataclass(frozen=True)
class BulkConfig:
    """How a bulk scoring job reaches the servers and cuts its work.

    Attributes:
        urls: ``host:port`` of one or more Triton servers (see :class:`~client.ClientConfig`).
        model: the served model's name.
        protocol: ``"grpc"`` or ``"http"``.
        token: the API token, or ``None``. It travels to the workers inside the job; never
            logged.
        column: the input column of base64 image files.
        keep: input columns copied to the output; ``None``: every column but ``column``.
        batch_rows: rows per ``predict`` call (and per Parquet batch written): bounds a task's
            memory to about this many images.
        rows_per_split: rows per Spark task (grouped Parquet row groups; a CSV file is one
            task whatever its size).
        concurrency: requests in flight per task (each task has its own client).
        timeout: deadline of each request in seconds.
        retries: extra attempts of a request after a transient failure.
        ready_timeout: how long a task waits for its server and model to be ready.
        format: ``"parquet"`` or ``"csv"``; default from the input's suffix.
        s3_endpoint_url: an S3-compatible endpoint for ``s3://`` input and output.
        overwrite: replace an earlier result in the output folder.
    """

    urls: tuple[str, ...]
    model: str = DEFAULT_MODEL_NAME
    protocol: str = "grpc"
    token: str | None = field(default=None, repr=False)
    column: str = IMAGE_COLUMN
    keep: tuple[str, ...] | None = None
    batch_rows: int = 256
    rows_per_split: int = 5000
    concurrency: int = 4
    timeout: float = 60.0
    retries: int = 4
    ready_timeout: float = 60.0
    format: str | None = None
    s3_endpoint_url: str | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.urls, str) or not self.urls:
            raise ConfigError(f"urls must be a non-empty sequence of host:port, got {self.urls!r}")
        object.__setattr__(self, "urls", tuple(self.urls))
        if self.keep is not None:
            object.__setattr__(self, "keep", tuple(self.keep))
        for name in ("batch_rows", "rows_per_split"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        if not self.ready_timeout > 0:
            raise ConfigError(f"ready_timeout must be positive, got {self.ready_timeout!r}")
        _ = self.client_config(self.urls).addresses  # every client setting checked here, once

    def client_config(self, urls: tuple[str, ...]) -> ClientConfig:
        """The :class:`~client.ClientConfig` of the client a task opens for ``urls``."""
        return ClientConfig(
            url=urls if len(urls) > 1 else urls[0],
            model=self.model,
            protocol=self.protocol,
            token=self.token,
            timeout=self.timeout,
            concurrency=self.concurrency,
            retries=self.retries,
        )


@dataclass(frozen=True)
class BulkReport:
    """What :func:`score_table` did.

    Attributes:
        output: the folder of Parquet parts.
        rows: rows written (scored or failed).
        failed: rows with a reason in the ``error`` column.
        splits: Spark tasks run.
        seconds: wall time of the scoring job (splits planned to last part written).
        requests_per_url: requests each server answered (``protocol://host:port``; a row
            refused before sending, such as one that is not base64, sends none).
    """

    output: str
    rows: int
    failed: int
    splits: int
    seconds: float
    requests_per_url: dict[str, int]

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0
