"""DetectionClient against a real Triton server on loopback (HTTP and gRPC)."""

from __future__ import annotations

import io
import logging
import threading
import time
import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from client import DetectionClient, encode_images, revert_predict_to_array, row_errors
from client.codec import IMAGE_COLUMN, OUTPUT_COLUMNS, encode_image
from detstack.contract import DEFAULT_MODEL_NAME
from detstack.errors import ModelNotReadyError, ServerUnreachableError, UnauthorizedError
from serve import ServeConfig, TritonServer
from serve._server import find_free_ports
from tests.client.test_codec import _seed_revert_predict_to_array
from tests.fixtures.triton import TRITON_TEST_TOKEN, write_echo_repository

pytestmark = [pytest.mark.triton, pytest.mark.slow]

PROTOCOLS = ("grpc", "http")


def _png(width: int, height: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _address(server: TritonServer, protocol: str) -> str:
    return server.endpoints.grpc if protocol == "grpc" else server.endpoints.http


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_predict_returns_the_seed_format_aligned_with_the_input_index_and_fails_only_bad_rows(
    triton_server_with_token, protocol
):
    images = {"b": _png(64, 48, 1), 5: _png(40, 64, 2), "a": _png(72, 72, 3)}
    frame = encode_images(list(images.values()), index=list(images))
    frame.loc["broken"] = "not-base64!"
    frame.loc[7] = encode_image(b"GIF89a but truncated")
    frame.loc["none"] = None
    with DetectionClient(
        _address(triton_server_with_token, protocol), protocol=protocol, token=TRITON_TEST_TOKEN
    ) as client:
        client.wait_until_ready(timeout=30)
        result = client.predict(frame)
        one_by_one = client.predict_arrays(list(images.values()))
        names = client.category_names()

    assert list(result.columns) == list(OUTPUT_COLUMNS)
    assert list(result.index) == list(frame.index)
    errors = row_errors(result)
    assert set(errors) == {"broken", 7, "none"}
    assert "invalid base64" in errors["broken"] and "missing" in errors["none"]
    assert result.loc[["broken", 7, "none"]].isna().all().all()

    good = result.loc[list(images)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        seed_arrays = _seed_revert_predict_to_array(good)
    ours = revert_predict_to_array(result)
    assert names, "the served model must describe its categories"
    for label, expected in zip(images, one_by_one, strict=True):
        np.testing.assert_allclose(seed_arrays.loc[label, "boxes"], expected.boxes, atol=1e-3)
        np.testing.assert_array_equal(seed_arrays.loc[label, "labels"], expected.labels)
        np.testing.assert_allclose(ours.loc[label, "scores"], expected.scores, atol=1e-5)
        assert ours.loc[label, "labels"].dtype == np.int64
        assert expected.names == tuple(names.get(int(i), str(int(i))) for i in expected.labels)
        assert expected.model_version


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    "token", [None, "wrong-token-but-long-enough-123"], ids=["missing", "wrong"]
)
def test_a_missing_or_wrong_token_is_refused_with_unauthorized_and_never_echoed(
    triton_server_with_token, protocol, token
):
    frame = encode_images([_png(32, 32)])
    with DetectionClient(
        _address(triton_server_with_token, protocol), protocol=protocol, token=token, retries=3
    ) as client:
        started = time.monotonic()
        with pytest.raises(UnauthorizedError) as raised:
            client.predict(frame)
        assert time.monotonic() - started < 5, "a refused token must not be retried"
        with pytest.raises(UnauthorizedError):
            client.wait_until_ready(timeout=5)
    if token:
        assert token not in str(raised.value)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_server_that_is_down_raises_server_unreachable_after_bounded_retries(protocol):
    (port,) = find_free_ports("127.0.0.1", 1)
    with DetectionClient(
        f"127.0.0.1:{port}", protocol=protocol, retries=2, backoff=0.05, timeout=5
    ) as client:
        started = time.monotonic()
        with pytest.raises(ServerUnreachableError, match=str(port)):
            client.predict(encode_images([_png(16, 16)]))
        assert time.monotonic() - started < 10
        with pytest.raises(ServerUnreachableError):
            client.wait_until_ready(timeout=1, poll=0.2)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_unknown_model_is_reported_as_not_ready(triton_server, protocol):
    with DetectionClient(
        _address(triton_server, protocol), model="no-such-model", protocol=protocol
    ) as client:
        with pytest.raises(ModelNotReadyError, match="no-such-model"):
            client.predict(encode_images([_png(16, 16)]))
        with pytest.raises(ModelNotReadyError):
            client.wait_until_ready(timeout=1, poll=0.2)


@pytest.mark.parametrize(
    ("protocol", "how"), [("grpc", "stop"), ("http", "kill")], ids=["grpc-graceful", "http-crash"]
)
def test_a_server_restarted_mid_run_loses_and_misaligns_no_row(tmp_path, protocol, how, caplog):
    """Rows in flight when the server goes away are retried; every row answers for itself.

    A graceful stop unloads the model while requests still arrive ("no available versions");
    a crash resets connections mid-request. Both must end with every row answered in place.
    """
    caplog.set_level(logging.INFO, logger="client._client")
    repository = write_echo_repository(tmp_path / "repository", delay_s=0.05)
    http_port, grpc_port, metrics_port = find_free_ports("127.0.0.1", 3)
    config = ServeConfig(
        repository=str(repository),
        host="127.0.0.1",
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        startup_timeout_s=120.0,
        exit_timeout_s=5,
    )
    # The echo model answers one box covering the image: each row's box gives its size back.
    sizes = [(16 + 3 * i, 16 + 2 * (i % 7)) for i in range(40)]
    frame = encode_images(
        [_png(w, h, i) for i, (w, h) in enumerate(sizes)],
        index=[f"row-{i}" for i in range(len(sizes))][::-1],
    )
    server = TritonServer(config).start()
    outcome: dict[str, object] = {}
    try:
        port = grpc_port if protocol == "grpc" else http_port
        with DetectionClient(
            f"127.0.0.1:{port}", protocol=protocol, concurrency=2, retries=30, backoff=0.2
        ) as client:
            client.wait_until_ready(timeout=30)

            def run() -> None:
                try:
                    outcome["result"] = client.predict(frame)
                except Exception as error:  # reported by the assertion below
                    outcome["error"] = error

            worker = threading.Thread(target=run)
            worker.start()
            time.sleep(0.3)
            server.stop() if how == "stop" else server.kill()
            server = TritonServer(config).start()
            worker.join(timeout=120)
            assert not worker.is_alive()
    finally:
        server.stop()
    assert "error" not in outcome, outcome.get("error")
    assert any("retry" in r.getMessage() for r in caplog.records), "the restart was not mid-run"
    result = outcome["result"]
    assert row_errors(result) == {}
    arrays = revert_predict_to_array(result)
    assert list(arrays.index) == list(frame.index)
    for label, (width, height) in zip(frame.index, sizes, strict=True):
        np.testing.assert_array_equal(arrays.loc[label, "boxes"], [[0, 0, width, height]])


def test_the_client_reads_category_names_and_colours_from_the_served_model(triton_server):
    with DetectionClient(triton_server.endpoints.grpc) as client:
        client.wait_until_ready(timeout=30)
        labels = client.labels()
    assert labels
    for info in labels.values():
        assert info["name"]
        assert info["color"].startswith("#")


def test_predict_of_an_empty_frame_sends_nothing_and_returns_the_seed_columns(triton_server):
    with DetectionClient(triton_server.endpoints.http, protocol="http") as client:
        result = client.predict(pd.DataFrame({IMAGE_COLUMN: []}))
    assert list(result.columns) == list(OUTPUT_COLUMNS)
    assert result.empty


def test_the_default_model_name_is_the_seed_model_name():
    with DetectionClient("localhost:1") as client:
        assert client.config.model == DEFAULT_MODEL_NAME == "my-detection-model"


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory):
    """A server whose model takes 2 s per request (to hit client deadlines)."""
    from tests.fixtures.triton import start_server

    repository = write_echo_repository(tmp_path_factory.mktemp("slow"), delay_s=2.0)
    server = start_server(repository)
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_request_past_its_deadline_fails_fast_and_is_not_retried(slow_server, protocol):
    with DetectionClient(
        _address(slow_server, protocol), protocol=protocol, timeout=0.5, retries=3
    ) as client:
        started = time.monotonic()
        with pytest.raises(ServerUnreachableError, match=r"within 0\.5 s"):
            client.predict_arrays([np.zeros((8, 8, 3), np.uint8)])
        assert time.monotonic() - started < 1.9


def test_an_image_over_the_request_size_limit_fails_only_its_row_before_it_is_sent(
    triton_server,
):
    frame = encode_images([_png(16, 16), _png(64, 64)], index=["small", "large"])
    with DetectionClient(
        triton_server.endpoints.http, protocol="http", max_request_bytes=3 * 32 * 32
    ) as client:
        result = client.predict(frame)
    assert result.loc["small"].notna().all()
    assert "over the http request limit" in row_errors(result)["large"]
    assert "grpc" in row_errors(result)["large"]
