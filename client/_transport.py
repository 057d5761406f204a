"""Thin HTTP and gRPC transports over ``tritonclient``; their failures leave typed.

A transport sends one image, as the image file (``image_bytes``, one BYTES element: the file's
own bytes, binary) or as pixels (``image``, the contract's uint8 CHW tensor, binary), and
returns the three output arrays and the model version that answered. Every failure leaves this
module as one :mod:`detstack.errors` type with a flag saying whether trying again can help
(the table is in :mod:`client._failures`). Messages never contain the API token.

Example:
    >>> transport = open_transport(settings)                      # doctest: +SKIP
    >>> outputs, version = transport.infer(Payload.of_file(data))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from client._failures import TransportError, call
from detstack import tokens
from detstack.contract import BATCHED_IMAGE, IMAGE, IMAGE_BYTES, OUTPUTS
from detstack.errors import InferenceError
from detstack.tokens import TOKEN_SCHEME

__all__ = [
    "Payload",
    "TransportError",
    "TransportSettings",
    "open_transport",
    "token_headers",
]

logger = logging.getLogger(__name__)

#: gRPC's largest message (Triton's server default): the channel must allow as much.
_GRPC_MAX_MESSAGE = 2**31 - 1

T = TypeVar("T")


@dataclass(frozen=True, eq=False)
class Payload:
    """What one request carries: the input's name, its Triton dtype and the array.

    ``model`` names the model to send it to when that is not the client's own: pixels for a
    model that takes only files go to the model its config names (the GPU flavour's
    decode-on-GPU ensemble sends them to ``<name>-detector``, see :meth:`of_pixels`).
    """

    name: str
    datatype: str
    array: np.ndarray
    model: str | None = None

    @classmethod
    def of_file(cls, data: bytes) -> Payload:
        """An image file as the one BYTES element of ``image_bytes``."""
        return cls(IMAGE_BYTES.name, IMAGE_BYTES.datatype, np.array([data], dtype=np.object_))

    @classmethod
    def of_pixels(cls, image: np.ndarray, model: str | None = None) -> Payload:
        """uint8 CHW pixels as ``image``; to ``model`` (if given) as ``BATCHED_IMAGE``.

        ``model`` is the pixel model of a served model that takes only files
        (:data:`detstack.contract.PIXELS_MODEL_PARAMETER`): its input has DALI's leading batch
        dimension of one.
        """
        if model is None:
            return cls(IMAGE.name, IMAGE.datatype, image)
        return cls(BATCHED_IMAGE.name, BATCHED_IMAGE.datatype, image[np.newaxis], model)

    @property
    def nbytes(self) -> int:
        """Bytes of the tensor on the wire (BYTES: 4-byte length prefix per element)."""
        if self.datatype == "BYTES":
            return sum(4 + len(item) for item in self.array.reshape(-1))
        return int(self.array.nbytes)


@dataclass(frozen=True)
class TransportSettings:
    """How to reach the server (built by :class:`client.DetectionClient`)."""

    address: str
    protocol: str
    model: str
    model_version: str
    token: str | None
    token_header: str
    token_scheme: str
    timeout: float
    connect_timeout: float
    ssl: bool = False

    def __repr__(self) -> str:  # the token must never reach a log line or a traceback
        token = "***" if self.token else None
        return (
            f"TransportSettings(address={self.address!r}, protocol={self.protocol!r}, "
            f"model={self.model!r}, token={token})"
        )


def token_headers(
    protocol: str, header: str, token: str | None, scheme: str = TOKEN_SCHEME
) -> dict[str, str] | None:
    """The request headers carrying ``token`` on ``protocol`` (``None`` without a token).

    What :mod:`detstack.tokens` says both ends agree on (``Authorization: Bearer <token>``; on
    gRPC under Triton's ``triton-grpc-protocol-`` prefix), for the header and scheme configured.
    """
    return tokens.token_headers(token, protocol, header=header, scheme=scheme) or None


class _Transport:
    """What :class:`client.DetectionClient` needs from a protocol."""

    settings: TransportSettings

    def infer(self, payload: Payload) -> tuple[dict[str, np.ndarray], str]:
        raise NotImplementedError

    def server_ready(self) -> bool:
        raise NotImplementedError

    def model_ready(self) -> bool:
        raise NotImplementedError

    def model_config(self) -> dict[str, Any]:
        raise NotImplementedError

    def statistics(self) -> dict[str, Any]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def _outputs(result: Any) -> dict[str, np.ndarray]:
    arrays = {}
    for spec in OUTPUTS:
        array = result.as_numpy(spec.name)
        if array is None:
            raise TransportError(
                InferenceError(f"the response has no {spec.name!r} output"), transient=False
            )
        arrays[spec.name] = array
    return arrays


class _HttpTransport(_Transport):
    """HTTP/REST with binary tensors; one ``tritonclient.http`` client per worker thread.

    ``tritonclient.http`` clients are not thread-safe, so each thread of the client's pool gets
    its own (with its own keep-alive connection).
    """

    def __init__(self, settings: TransportSettings) -> None:
        self.settings = settings
        self._headers = token_headers(
            "http", settings.token_header, settings.token, settings.token_scheme
        )
        self._local = threading.local()
        self._clients: list[Any] = []
        self._lock = threading.Lock()

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            import tritonclient.http as httpclient

            client = httpclient.InferenceServerClient(
                self.settings.address,
                connection_timeout=self.settings.connect_timeout,
                network_timeout=self.settings.timeout,
                ssl=self.settings.ssl,
            )
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def _reset(self) -> None:
        # After a failure the keep-alive connection may be dead (server restarted): start over.
        client = getattr(self._local, "client", None)
        if client is not None:
            self._local.client = None
            with self._lock:
                if client in self._clients:
                    self._clients.remove(client)
            try:
                client.close()
            except Exception:  # closing a broken connection may fail; ignore
                logger.debug("closing a broken HTTP client failed", exc_info=True)

    def _do(self, what: str, function: Callable[[Any], T]) -> T:
        try:
            return call(self.settings, what, lambda: function(self._client()))
        except TransportError as error:
            if error.transient:
                self._reset()
            raise

    def infer(self, payload: Payload) -> tuple[dict[str, np.ndarray], str]:
        import tritonclient.http as httpclient

        tensor = httpclient.InferInput(payload.name, list(payload.array.shape), payload.datatype)
        tensor.set_data_from_numpy(payload.array, binary_data=True)
        outputs = [httpclient.InferRequestedOutput(s.name, binary_data=True) for s in OUTPUTS]
        result = self._do(
            "an inference request",
            lambda c: c.infer(
                payload.model or self.settings.model,
                [tensor],
                model_version=self.settings.model_version,
                outputs=outputs,
                headers=self._headers,
            ),
        )
        response = result.get_response() or {}
        return _outputs(result), str(response.get("model_version", ""))

    def server_ready(self) -> bool:
        return bool(self._do("a readiness check", lambda c: c.is_server_ready()))

    def model_ready(self) -> bool:
        return bool(
            self._do(
                "a model readiness check",
                lambda c: c.is_model_ready(
                    self.settings.model, self.settings.model_version, headers=self._headers
                ),
            )
        )

    def model_config(self) -> dict[str, Any]:
        return self._do(
            "a model configuration request",
            lambda c: c.get_model_config(
                self.settings.model, self.settings.model_version, headers=self._headers
            ),
        )

    def statistics(self) -> dict[str, Any]:
        return self._do(
            "a statistics request",
            lambda c: c.get_inference_statistics(self.settings.model, headers=self._headers),
        )

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            try:
                client.close()
            except Exception:  # best effort on shutdown
                logger.debug("closing an HTTP client failed", exc_info=True)


class _GrpcTransport(_Transport):
    """gRPC with one channel shared by every thread (gRPC channels are thread-safe)."""

    def __init__(self, settings: TransportSettings) -> None:
        import tritonclient.grpc as grpcclient

        self.settings = settings
        self._headers = token_headers(
            "grpc", settings.token_header, settings.token, settings.token_scheme
        )
        self._client = grpcclient.InferenceServerClient(
            settings.address,
            ssl=settings.ssl,
            channel_args=[
                # The channel's own default receive limit (4 MiB) is far below Triton's 2 GiB.
                ("grpc.max_send_message_length", _GRPC_MAX_MESSAGE),
                ("grpc.max_receive_message_length", _GRPC_MAX_MESSAGE),
                # Reconnect quickly after a server restart instead of backing off for minutes.
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000),
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_timeout_ms", 10_000),
            ],
        )

    def _do(self, what: str, function: Callable[[], T]) -> T:
        return call(self.settings, what, function)

    def infer(self, payload: Payload) -> tuple[dict[str, np.ndarray], str]:
        import tritonclient.grpc as grpcclient

        tensor = grpcclient.InferInput(payload.name, list(payload.array.shape), payload.datatype)
        tensor.set_data_from_numpy(payload.array)
        outputs = [grpcclient.InferRequestedOutput(s.name) for s in OUTPUTS]
        result = self._do(
            "an inference request",
            lambda: self._client.infer(
                payload.model or self.settings.model,
                [tensor],
                model_version=self.settings.model_version,
                outputs=outputs,
                headers=self._headers,
                client_timeout=self.settings.timeout,
            ),
        )
        return _outputs(result), str(result.get_response().model_version)

    def server_ready(self) -> bool:
        return bool(
            self._do(
                "a readiness check",
                lambda: self._client.is_server_ready(client_timeout=self.settings.timeout),
            )
        )

    def model_ready(self) -> bool:
        return bool(
            self._do(
                "a model readiness check",
                lambda: self._client.is_model_ready(
                    self.settings.model,
                    self.settings.model_version,
                    headers=self._headers,
                    client_timeout=self.settings.timeout,
                ),
            )
        )

    def model_config(self) -> dict[str, Any]:
        response = self._do(
            "a model configuration request",
            lambda: self._client.get_model_config(
                self.settings.model,
                self.settings.model_version,
                headers=self._headers,
                as_json=True,
                client_timeout=self.settings.timeout,
            ),
        )
        return response.get("config", response)

    def statistics(self) -> dict[str, Any]:
        return self._do(
            "a statistics request",
            lambda: self._client.get_inference_statistics(
                self.settings.model,
                headers=self._headers,
                as_json=True,
                client_timeout=self.settings.timeout,
            ),
        )

    def close(self) -> None:
        self._client.close()


def open_transport(settings: TransportSettings) -> _Transport:
    """Create the transport for ``settings.protocol`` (``"http"`` or ``"grpc"``)."""
    if settings.protocol == "http":
        return _HttpTransport(settings)
    if settings.protocol == "grpc":
        return _GrpcTransport(settings)
    raise InferenceError(f"unknown protocol {settings.protocol!r}; expected 'grpc' or 'http'")
