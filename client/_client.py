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

import dataclasses
import logging
import os
import random
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from client._config import ClientConfig, is_ssl
from client._endpoints import EndpointPool, EndpointStats
from client._inputs import as_chw, file_bytes
from client._labels import LabelMaps, config_parameter
from client._statistics import merge_statistics
from client._transport import (
    Payload,
    TransportError,
    TransportSettings,
    _Transport,
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
from detstack.contract import DEFAULT_MODEL_NAME, PIXELS_MODEL_PARAMETER
from detstack.errors import BadInputError, ConfigError, InferenceError
from detstack.wire import image_file_bytes

__all__ = ["DetectionClient", "TimedDetections"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


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
                settings = replace(self._settings, address=address, ssl=is_ssl(url))
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
        self._labels = LabelMaps(self.model_config, config.model)
        # Where pixels go when the model takes only files (export --gpu-decode): looked up on
        # the first pixel request (_pixels_target).
        self._pixels_model: str | None = None
        self._pixels_model_known = False
        self._jitter = random.Random()  # backoff jitter (no shared global RNG)
        self._closed = False

    @classmethod
    def from_config(cls, config: ClientConfig) -> DetectionClient:
        """Build a client from a ready :class:`ClientConfig` (what the CLI does)."""
        return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(config)})

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
                self._labels.refresh()
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

    def labels(self, version: str | None = None) -> dict[int, dict[str, str]]:
        """``{category id: {"name", "color"}}`` of a served version (default: the newest).

        Read from the model config the export stage wrote; empty if the model has none.
        """
        return self._labels.labels(version)

    def category_names(self, version: str | None = None) -> dict[int, str]:
        """``{category id: name}`` of a served version (default: the newest)."""
        return {i: str(info.get("name", i)) for i, info in self.labels(version).items()}

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
            names=self._labels.names(labels, version),
            model_version=version,
        )
        return TimedDetections(detections, request_s, attempts)

    def _pixels_target(self) -> str | None:
        """The model that takes this model's pixels, when it takes only files, else None.

        A GPU flavour exported with ``--gpu-decode`` is an ensemble taking image files; its
        config names the detector that takes pixels (``PIXELS_MODEL_PARAMETER``). Read once,
        on the first pixel request (two threads reading it at once both get the same answer).
        """
        if not self._pixels_model_known:
            self._pixels_model = config_parameter(self.model_config(), PIXELS_MODEL_PARAMETER)
            self._pixels_model_known = True
        return self._pixels_model

    def infer_chw(self, image: np.ndarray, where: str = "image") -> TimedDetections:
        """Run the model on one uint8 CHW image (the contract's tensor), with timings.

        Raises:
            BadInputError: the server (or the size check) rejected this image.
            ServerUnreachableError, UnauthorizedError, ModelNotReadyError: see the module doc.
        """
        return self._infer(Payload.of_pixels(image, self._pixels_target()), where)

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
            payload = Payload.of_pixels(decoded, self._pixels_target())
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
                return self.infer_encoded(file_bytes(image, where), where).detections
            chw = as_chw(image, where, self.config.max_pixels)
            return self.infer_chw(chw, where).detections

        return self._run_all([(lambda p=p, i=i: run(p, i)) for p, i in enumerate(images)])
