"""``DetectionClient``: the seed's DataFrame protocol, served by Triton over gRPC or HTTP.

One request per image, sent by a bounded pool of worker threads. By default (``wire="encoded"``)
a request carries the image *file* (one BYTES element ``image_bytes``, binary): the server
decodes it, so a photo travels as its few megabytes, not as its pixels, and the client does
only cheap checks (base64 validity, the size limit, the format's magic bytes). With
``wire="pixels"`` a request carries the contract's uint8 CHW tensor, for callers that already
hold decoded frames. Each call has a deadline; transient failures are retried with exponential
backoff.
A bad row fails only that row; a failure of the server itself (unreachable, token refused,
model not ready) raises one typed error from :mod:`detstack.errors`.

Category names and colours come from the served model's config (the label map parameter written
by the export stage), per model version, so the client needs nothing but the URL.

Given several URLs (servers of one model repository), the client spreads requests over the
healthy ones (least outstanding requests), takes one out when it refuses connections or answers
503/UNAVAILABLE, probes it back in, and retries a failed request on another one: see
:mod:`client._endpoints`. Rows stay where they were whichever server answered them.

Example:
    >>> with DetectionClient("localhost:8001", token=os.environ.get("DETSTACK_API_TOKEN")) as c:
    ...     c.wait_until_ready(timeout=60)
    ...     result = c.predict(encode_images(["dog.jpg", "cat.jpg"]))  # doctest: +SKIP
    >>> arrays = revert_predict_to_array(result)                      # doctest: +SKIP
    >>> with DetectionClient(["10.0.0.5:8001", "10.0.0.6:8001"]) as c:  # doctest: +SKIP
    ...     result = c.predict(frame)
    ...     c.endpoint_stats()                    # per server: healthy, sent, failures, ...
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from client._endpoints import EndpointPool, EndpointStats, merge_statistics
from client._transport import (
    Payload,
    TransportError,
    TransportSettings,
    _Transport,
    label_map_from_config,
    open_transport,
)
from client.codec import (
    IMAGE_COLUMN,
    Detections,
    RowError,
    check_image_file,
    decode_row,
    encode_predictions,
    encoded_row,
    failed_rows,
    image_column,
)
from detstack.contract import DEFAULT_MODEL_NAME, LABEL_MAP_PARAMETER
from detstack.errors import (
    BadInputError,
    ConfigError,
    ImageDecodeError,
    InferenceError,
)
from detstack.images import DEFAULT_MAX_PIXELS, decode_image, to_chw
from detstack.wire import image_file_bytes

__all__ = [
    "DEFAULT_TOKEN_HEADER",
    "WIRES",
    "ClientConfig",
    "DetectionClient",
    "TimedDetections",
]

logger = logging.getLogger(__name__)

#: Header carrying the API token as ``Bearer <token>`` (``triton-grpc-protocol-`` is prepended
#: on gRPC): what ``detstack serve`` makes Triton check.
DEFAULT_TOKEN_HEADER = "authorization"  # noqa: S105 - a header name
DEFAULT_TOKEN_SCHEME = "Bearer"  # noqa: S105 - an auth scheme
#: Triton's default ``--http-max-input-size`` (64 MiB); gRPC allows up to 2 GiB.
HTTP_MAX_REQUEST_BYTES = 64 * 2**20
GRPC_MAX_REQUEST_BYTES = 2**31 - 2**20
_DEFAULT_PORTS = {"http": 8000, "grpc": 8001}
#: What a request carries: the image file (the server decodes) or decoded uint8 CHW pixels.
WIRES = ("encoded", "pixels")
#: Least seconds between two label-map fetches triggered by an unknown model version.
_LABEL_REFRESH_S = 5.0

T = TypeVar("T")


@dataclass(frozen=True)
class ClientConfig:
    """How :class:`DetectionClient` reaches and calls the server.

    Attributes:
        url: ``host:port`` (a ``http://``, ``https://`` or ``grpc://`` prefix is accepted; the
            port defaults to 8001 for gRPC, 8000 for HTTP), or a sequence of them: servers of
            the same model repository, used together (kept as a tuple; see :attr:`urls`).
        model: the served model's name.
        model_version: a version to pin (``""``: the server's latest).
        protocol: ``"grpc"`` (default, fastest) or ``"http"``.
        wire: ``"encoded"`` (default: send the image file, the server decodes it) or
            ``"pixels"`` (decode here, send uint8 CHW pixels).
        token: the API token, or ``None`` for a server without one. Never logged.
        token_header: the header name the server checks (see ``detstack serve``).
        token_scheme: the token's prefix in that header (``""`` for the bare token).
        timeout: seconds allowed for each call (the deadline of every request).
        connect_timeout: seconds allowed to open a connection (HTTP).
        concurrency: requests in flight at once (one image per request).
        retries: extra attempts for a transient failure (refused, reset, 503, UNAVAILABLE).
        backoff: first wait before a retry in seconds; doubled each time, capped at 5 s.
        max_pixels: larger images are refused (decompression-bomb protection; in encoded mode
            the server applies its own limit).
        max_request_bytes: larger requests (the file, or the pixel tensor) are refused
            client-side; ``None``: the server's default limit for the protocol (64 MiB HTTP,
            2 GiB gRPC).
        probe_backoff: with several URLs, seconds an endpoint that was taken out waits before
            its first readiness probe; doubled after each failed probe.
        probe_backoff_max: the longest wait between two probes of one endpoint.
    """

    url: str | tuple[str, ...] = "localhost:8001"
    model: str = DEFAULT_MODEL_NAME
    model_version: str = ""
    protocol: str = "grpc"
    wire: str = "encoded"
    token: str | None = field(default=None, repr=False)
    token_header: str = DEFAULT_TOKEN_HEADER
    token_scheme: str = DEFAULT_TOKEN_SCHEME
    timeout: float = 60.0
    connect_timeout: float = 5.0
    concurrency: int = 4
    retries: int = 4
    backoff: float = 0.25
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_request_bytes: int | None = None
    probe_backoff: float = 0.5
    probe_backoff_max: float = 10.0

    def __post_init__(self) -> None:
        if not isinstance(self.url, str):
            if not isinstance(self.url, Sequence) or not all(isinstance(u, str) for u in self.url):
                raise ConfigError(
                    f"url must be host:port or a sequence of them, got {type(self.url).__name__}"
                )
            object.__setattr__(self, "url", tuple(self.url))  # frozen: normalised once
            if not self.url:
                raise ConfigError("url: expected at least one host:port, got an empty sequence")
        if self.protocol not in _DEFAULT_PORTS:
            raise ConfigError(f"protocol must be 'grpc' or 'http', got {self.protocol!r}")
        if self.wire not in WIRES:
            raise ConfigError(f"wire must be 'encoded' or 'pixels', got {self.wire!r}")
        for name in ("timeout", "connect_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.retries < 0 or self.backoff < 0:
            raise ConfigError(
                f"retries and backoff must be >= 0, got {self.retries} and {self.backoff}"
            )
        if not 0 < self.probe_backoff <= self.probe_backoff_max:
            raise ConfigError(
                "probe_backoff must be > 0 and at most probe_backoff_max, got "
                f"{self.probe_backoff!r} and {self.probe_backoff_max!r}"
            )
        addresses = [_address(url, self.protocol) for url in self.urls]
        repeated = sorted({a for a in addresses if addresses.count(a) > 1})
        if repeated:
            raise ConfigError(f"url names {', '.join(repeated)} more than once")
        if self.token is not None and (
            not self.token or any(ord(c) < 0x21 or ord(c) > 0x7E for c in self.token)
        ):
            raise ConfigError(
                "the API token must be non-empty printable ASCII without spaces "
                "(it travels in an HTTP/gRPC header)"
            )

    @property
    def urls(self) -> tuple[str, ...]:
        """The URLs as given (one for a single ``url`` string)."""
        return (self.url,) if isinstance(self.url, str) else self.url

    @property
    def addresses(self) -> tuple[str, ...]:
        """Every endpoint's ``host:port`` (see :attr:`address`), in the order given."""
        return tuple(_address(url, self.protocol) for url in self.urls)

    @property
    def address(self) -> str:
        """``host:port`` without a scheme, with the protocol's default port if none was given.

        With several URLs, the first one's (see :attr:`addresses`).
        """
        return _address(self.urls[0], self.protocol)

    @property
    def ssl(self) -> bool:
        """Whether the (first) URL asks for TLS (``https://`` or ``grpcs://``)."""
        return _is_ssl(self.urls[0])

    @property
    def request_limit(self) -> int:
        if self.max_request_bytes is not None:
            return self.max_request_bytes
        return HTTP_MAX_REQUEST_BYTES if self.protocol == "http" else GRPC_MAX_REQUEST_BYTES


def _address(url: str, protocol: str) -> str:
    """``host:port`` of one URL, without its scheme, with the protocol's default port."""
    address = url.strip()
    for scheme in ("http://", "https://", "grpc://", "grpcs://"):
        if address.lower().startswith(scheme):
            address = address[len(scheme) :]
    address = address.rstrip("/")
    if not address or "/" in address or "," in address:
        hint = " (pass several URLs as a list, not one string)" if "," in address else ""
        raise ConfigError(f"url {url!r} is not host:port{hint}")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "]" in port:
        address = f"{address}:{_DEFAULT_PORTS[protocol]}"
    return address


def _is_ssl(url: str) -> bool:
    return url.strip().lower().startswith(("https://", "grpcs://"))


@dataclass(frozen=True)
class TimedDetections:
    """One answer with where its time went (what the benchmark records)."""

    detections: Detections
    request_s: float
    attempts: int


class DetectionClient:
    """Call the served detector with the seed's base64 DataFrame protocol.

    Use it as a context manager (or call :meth:`close`): it owns a thread pool and connections.

    Args:
        url: ``host:port`` of Triton's gRPC (default 8001) or HTTP (8000) endpoint, or a
            sequence of them (servers of one model repository, used together).
        model, protocol, token, timeout, concurrency, retries: see :class:`ClientConfig`;
            further :class:`ClientConfig` fields can be given as keywords.
    """

    def __init__(
        self,
        url: str | Sequence[str] = "localhost:8001",
        model: str = DEFAULT_MODEL_NAME,
        protocol: str = "grpc",
        token: str | None = None,
        timeout: float = 60.0,
        concurrency: int = 4,
        retries: int = 4,
        **options: Any,
    ) -> None:
        try:
            config = ClientConfig(
                url=url if isinstance(url, str) else tuple(url),
                model=model,
                protocol=protocol,
                token=token,
                timeout=timeout,
                concurrency=concurrency,
                retries=retries,
                **options,
            )
        except TypeError as error:
            raise ConfigError(f"DetectionClient: {error}") from None
        self._init(config)

    @classmethod
    def from_config(cls, config: ClientConfig) -> DetectionClient:
        """Build a client from a ready :class:`ClientConfig` (what the CLI does)."""
        client = cls.__new__(cls)
        client._init(config)
        return client

    def _init(self, config: ClientConfig) -> None:
        self.config = config
        self._settings = TransportSettings(
            address=config.address,
            protocol=config.protocol,
            model=config.model,
            model_version=config.model_version,
            token=config.token,
            token_header=config.token_header,
            token_scheme=config.token_scheme,
            timeout=config.timeout,
            connect_timeout=config.connect_timeout,
            ssl=config.ssl,
        )
        endpoints = []
        try:
            for url, address in zip(config.urls, config.addresses, strict=True):
                settings = replace(self._settings, address=address, ssl=_is_ssl(url))
                endpoints.append((f"{config.protocol}://{address}", open_transport(settings)))
        except BaseException:
            for _, transport in endpoints:
                transport.close()
            raise
        self._endpoints = EndpointPool(
            endpoints,
            probe_backoff=config.probe_backoff,
            probe_backoff_max=config.probe_backoff_max,
        )
        self._pool = ThreadPoolExecutor(
            max_workers=config.concurrency, thread_name_prefix="detstack-client"
        )
        self._label_maps: dict[str, dict[int, dict]] = {}
        self._labels_fetched_at: float | None = None
        self._jitter = random.Random()  # backoff jitter (no shared global RNG)
        self._label_lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"DetectionClient({', '.join(self._endpoints.urls)}, model={self.config.model!r})"

    def __enter__(self) -> DetectionClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker threads and close the connections (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._endpoints.close()

    # --- calls with retries -------------------------------------------------------------

    def _with_retries(self, function: Callable[[_Transport], T]) -> tuple[T, int]:
        """``function(transport)`` on the best endpoint, failing over and retrying transients."""
        return self._endpoints.call(
            function,
            retries=self.config.retries,
            backoff=self.config.backoff,
            jitter=self._jitter.random,
            log=logger,
        )

    def endpoint_stats(self) -> tuple[EndpointStats, ...]:
        """Per endpoint, in the order given: healthy now, in flight, sent, failures, ...

        Counts are cumulative since the client was created (see
        :class:`client._endpoints.EndpointStats`); a single-URL client has one entry.
        """
        return self._endpoints.stats()

    # --- readiness and metadata ---------------------------------------------------------

    def wait_until_ready(self, timeout: float = 60.0, poll: float = 0.5) -> None:
        """Block until the server and the model are ready and the token is accepted.

        With several URLs: until at least one endpoint is ready (each is asked every ``poll``
        s); those that are not are taken out of rotation and probed back in later.

        Raises:
            ServerUnreachableError: the server did not become ready within ``timeout`` s.
            ModelNotReadyError: the server is up but the model was not ready in time.
            UnauthorizedError: the server refused the token (raised at once, not waited on).
        """
        deadline = time.monotonic() + timeout
        while True:
            answers = self._endpoints.check_ready()
            if any(problem is None for _, problem in answers):
                self._refresh_labels()
                return
            problems = [problem for _, problem in answers if problem is not None]
            if time.monotonic() + poll > deadline:
                last = problems[-1]
                if len(problems) == 1:
                    raise type(last)(f"after waiting {timeout:g} s: {last}")
                reasons = "; ".join(str(problem) for problem in problems)
                raise type(last)(
                    f"after waiting {timeout:g} s, none of the {len(problems)} endpoints is "
                    f"ready ({reasons})"
                )
            time.sleep(poll)

    def model_config(self) -> dict[str, Any]:
        """The served model's configuration, as JSON (Triton's model-config API).

        With several URLs, from one healthy endpoint (they serve the same repository).
        """
        config, _ = self._with_retries(lambda transport: transport.model_config())
        return config

    def statistics(self) -> dict[str, Any]:
        """Triton's inference statistics of the model (cumulative; the bench takes deltas).

        With several URLs, the sum over the endpoints that answered (one attempt each; an
        endpoint that is down is left out, so a delta across its loss undercounts); see
        :meth:`statistics_per_endpoint`.

        Raises:
            ServerUnreachableError, UnauthorizedError, ...: no endpoint answered (the error of
                the last one; with one URL, after retries).
        """
        if len(self._endpoints) == 1:
            stats, _ = self._with_retries(lambda transport: transport.statistics())
            return stats
        answers = [answer for _, answer in self._endpoints.each(lambda t: t.statistics())]
        documents = [answer for answer in answers if not isinstance(answer, TransportError)]
        errors = [answer for answer in answers if isinstance(answer, TransportError)]
        if not documents:
            raise errors[-1].error from None
        return merge_statistics(documents)

    def statistics_per_endpoint(self) -> dict[str, dict[str, Any] | None]:
        """``{url: that server's statistics}``, ``None`` for an endpoint that did not answer."""
        return {
            url: (None if isinstance(answer, TransportError) else answer)
            for url, answer in self._endpoints.each(lambda transport: transport.statistics())
        }

    def _refresh_labels(self) -> None:
        config = self.model_config()
        label_maps = label_map_from_config(config, LABEL_MAP_PARAMETER)
        if not label_maps:
            logger.warning(
                "model %r carries no label map (parameter %r): names will be category ids",
                self.config.model,
                LABEL_MAP_PARAMETER,
            )
        with self._label_lock:
            self._label_maps = label_maps
            self._labels_fetched_at = time.monotonic()

    def labels(self, version: str | None = None) -> dict[int, dict[str, str]]:
        """``{category id: {"name", "color"}}`` of a served version (default: the newest).

        Read from the model config the export stage wrote; empty if the model has none.
        """
        with self._label_lock:
            known = dict(self._label_maps)
            fetched_at = self._labels_fetched_at
        # Fetch once, then again only for a version not seen yet (a new version was loaded),
        # at most every few seconds, so a model without a label map costs no extra requests.
        stale = fetched_at is None or (
            (not known or (version and version not in known))
            and time.monotonic() - fetched_at > _LABEL_REFRESH_S
        )
        if stale:
            self._refresh_labels()
            with self._label_lock:
                known = dict(self._label_maps)
        if not known:
            return {}
        if not version:
            version = max(known, key=lambda v: (len(v), v))  # numeric versions, newest
        return dict(known.get(str(version), {}))

    def category_names(self, version: str | None = None) -> dict[int, str]:
        """``{category id: name}`` of a served version (default: the newest)."""
        return {i: str(info.get("name", i)) for i, info in self.labels(version).items()}

    def _names(self, labels: np.ndarray, version: str) -> tuple[str, ...]:
        if not len(labels):
            return ()
        with self._label_lock:
            mapping = self._label_maps.get(version)
        if mapping is None:
            mapping = self.labels(version or None)
        return tuple(str(mapping.get(int(i), {}).get("name", int(i))) for i in labels)

    # --- inference ----------------------------------------------------------------------

    def _check_size(self, payload: Payload, where: str) -> None:
        limit = self.config.request_limit
        if payload.nbytes > limit:
            what = (
                "image file"
                if payload.datatype == "BYTES"
                else f"{payload.array.shape[2]}x{payload.array.shape[1]} image as a tensor"
            )
            raise BadInputError(
                f"{where}: the {what} is {payload.nbytes} bytes, over the "
                f"{self.config.protocol} request limit of {limit} bytes; use protocol='grpc' "
                f"(2 GiB) or a smaller image"
            )

    def _infer(self, payload: Payload, where: str) -> TimedDetections:
        if self._closed:
            raise InferenceError("this DetectionClient is closed")
        self._check_size(payload, where)
        start = time.perf_counter()
        (outputs, version), attempts = self._with_retries(
            lambda transport: transport.infer(payload)
        )
        request_s = time.perf_counter() - start
        labels = np.asarray(outputs["labels"], dtype=np.int64).reshape(-1)
        detections = Detections(
            boxes=np.asarray(outputs["boxes"], dtype=np.float32).reshape(-1, 4),
            scores=np.asarray(outputs["scores"], dtype=np.float32).reshape(-1),
            labels=labels,
            names=self._names(labels, version),
            model_version=version,
        )
        return TimedDetections(detections, request_s, attempts)

    def infer_chw(self, image: np.ndarray, where: str = "image") -> TimedDetections:
        """Run the model on one uint8 CHW image (the contract's tensor), with timings.

        Raises:
            BadInputError: the server (or the size check) rejected this image.
            ServerUnreachableError, UnauthorizedError, ModelNotReadyError: see the module doc.
        """
        return self._infer(Payload.of_pixels(image), where)

    def infer_encoded(self, data: bytes, where: str = "image") -> TimedDetections:
        """Run the model on one image file (its bytes; the server decodes it), with timings.

        Boxes are in the pixels of the file's image as a person sees it (EXIF orientation
        applied).

        Raises:
            BadInputError: the bytes are not an accepted image format, or the server (or the
                size check) rejected them; the message says why.
            ServerUnreachableError, UnauthorizedError, ModelNotReadyError: see the module doc.
        """
        data = check_image_file(image_file_bytes(data), where)
        return self._infer(Payload.of_file(data), where)

    def _predict_row(self, value: object, index: Hashable) -> Detections | RowError:
        where = f"row {index!r}"
        if self.config.wire == "encoded":
            data = encoded_row(value, index)
            if isinstance(data, RowError):
                return data
            payload = Payload.of_file(data)
        else:
            decoded = decode_row(value, index, max_pixels=self.config.max_pixels)
            if isinstance(decoded, RowError):
                return decoded
            payload = Payload.of_pixels(decoded)
        try:
            return self._infer(payload, where).detections
        except BadInputError as error:
            reason = str(error)
            return RowError(index, reason if reason.startswith(where) else f"{where}: {reason}")

    def _run_all(self, tasks: Sequence[Callable[[], T]]) -> list[T]:
        futures: list[Future[T]] = [self._pool.submit(task) for task in tasks]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in futures if f in done and f.exception() is not None), None)
        if failed is not None:
            for future in pending:
                future.cancel()
            wait(pending)
            raise failed.exception()  # type: ignore[misc]
        return [future.result() for future in futures]

    def predict_rows(
        self, frame: pd.DataFrame, *, column: str = IMAGE_COLUMN
    ) -> list[Detections | RowError]:
        """Like :meth:`predict`, but one :class:`Detections` or :class:`RowError` per row.

        The detections carry category names and the model version that answered.
        """
        series = image_column(frame, column)
        tasks = [
            (lambda v=value, i=index: self._predict_row(v, i))
            for index, value in zip(series.index, series.array, strict=True)
        ]
        return self._run_all(tasks)

    def predict(self, frame: pd.DataFrame, *, column: str = IMAGE_COLUMN) -> pd.DataFrame:
        """Detect objects in every row of the seed's input DataFrame.

        Args:
            frame: one column ``image_data`` of base64-encoded image files (any index).
            column: the column to read, if not ``image_data``.

        Returns:
            The seed's output: columns ``boxes``, ``labels``, ``scores`` (base64 of raw numpy
            bytes), the input's index. Rows that failed (bad image, or rejected by the server)
            hold ``None`` and their reasons are in ``result.attrs["errors"]``
            (see :func:`client.row_errors`).

        Raises:
            BadInputError: ``frame`` is not a DataFrame or has no image column.
            ServerUnreachableError, UnauthorizedError, ModelNotReadyError: the server failed
                as a whole (after retries for what is transient); no partial frame is returned.
        """
        results = self.predict_rows(frame, column=column)
        output = encode_predictions(frame.index, results)
        failures = failed_rows(results)
        if failures:
            logger.warning("%d of %d rows failed", failures, len(frame))
        return output

    def predict_arrays(
        self, images: Sequence[np.ndarray | bytes | str | os.PathLike[str]]
    ) -> list[Detections]:
        """Detect objects in images given as arrays, image-file bytes or paths.

        Arrays are RGB ``uint8``, HWC ``(H, W, 3)`` (what ``np.asarray(PIL image)`` gives) or,
        when the first axis is 3 and the last is not, the contract's CHW ``(3, H, W)``.

        Returns:
            One :class:`~client.codec.Detections` per image, with category names.

        Raises:
            BadInputError / ImageDecodeError: an image is not usable (its position is named).
            ServerUnreachableError, UnauthorizedError, ModelNotReadyError: as :meth:`predict`.
        """

        def run(position: int, image: Any) -> Detections:
            where = f"image {position}"
            if self.config.wire == "encoded" and not isinstance(image, np.ndarray):
                return self.infer_encoded(_file_bytes(image, where), where).detections
            chw = _as_chw(image, where, self.config.max_pixels)
            return self.infer_chw(chw, where).detections

        return self._run_all([(lambda p=p, i=i: run(p, i)) for p, i in enumerate(images)])


def _file_bytes(image: Any, where: str) -> bytes:
    """The bytes of an image given as bytes or as a path."""
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image)
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        try:
            return path.read_bytes()
        except OSError as error:
            raise ImageDecodeError(f"{path}: cannot read ({error.strerror or error})") from None
    raise BadInputError(
        f"{where}: expected an array, image bytes or a path, got {type(image).__name__}"
    )


def _as_chw(image: Any, where: str, max_pixels: int) -> np.ndarray:
    if isinstance(image, bytes | bytearray | memoryview | str | os.PathLike):
        source = str(image) if isinstance(image, str | os.PathLike) else where
        data = _file_bytes(image, where)
        return to_chw(decode_image(data, source=source, max_pixels=max_pixels))
    if not isinstance(image, np.ndarray):
        raise BadInputError(
            f"{where}: expected an array, image bytes or a path, got {type(image).__name__}"
        )
    if image.dtype != np.uint8:
        raise BadInputError(f"{where}: expected a uint8 array, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 3:
        return np.ascontiguousarray(image.transpose(2, 0, 1))
    if image.ndim == 3 and image.shape[0] == 3:
        return np.ascontiguousarray(image)
    raise BadInputError(
        f"{where}: expected an RGB image of shape (H, W, 3) or (3, H, W), got {image.shape}"
    )
