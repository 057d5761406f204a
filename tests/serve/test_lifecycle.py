"""Integration tests: start-up failures with Triton's reason, graceful shutdown, poll mode."""

from __future__ import annotations

import shutil
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.http as httpclient

from detstack.contract import BOXES, DEFAULT_MODEL_NAME, IMAGE
from detstack.errors import RepositoryError, ServeError
from serve import ApiToken, ServeConfig, TritonServer
from serve import _server as server_module
from tests.fixtures.repository import export_tiny
from tests.fixtures.triton import TRITON_TEST_TOKEN, write_echo_repository

pytestmark = [pytest.mark.triton, pytest.mark.slow]


def _infer(endpoint: str) -> tuple[str, object]:
    client = httpclient.InferenceServerClient(endpoint, network_timeout=60)
    request = httpclient.InferInput(IMAGE.name, [3, 8, 8], IMAGE.datatype)
    request.set_data_from_numpy(np.zeros((3, 8, 8), np.uint8), binary_data=True)
    try:
        result = client.infer(DEFAULT_MODEL_NAME, [request])
    except Exception as error:  # any refusal counts: connection closed, 503, ...
        return "refused", error
    return "ok", result.as_numpy(BOXES.name)


def test_stop_lets_in_flight_requests_finish_and_refuses_new_ones(tmp_path, triton_server_factory):
    # One instance, 1 s per request: three requests stay in flight for about 3 s.
    server = triton_server_factory(
        write_echo_repository(tmp_path / "slow", delay_s=1.0), exit_timeout_s=20
    )
    endpoint = server.endpoints.http
    with ThreadPoolExecutor(4) as pool:
        in_flight = [pool.submit(_infer, endpoint) for _ in range(3)]
        time.sleep(0.5)
        stopping = pool.submit(server.stop)
        time.sleep(0.5)
        late = pool.submit(_infer, endpoint)
        outcomes = [future.result() for future in in_flight]
        assert stopping.result() == 0
        assert late.result()[0] == "refused"
    assert [status for status, _ in outcomes] == ["ok", "ok", "ok"]
    assert not server.is_alive() and server.clean_stop


def test_model_that_fails_to_load_stops_start_with_tritons_reason(tmp_path):
    repository = write_echo_repository(
        tmp_path / "broken", fail_on_load="weights file model.onnx is missing"
    )
    config = ServeConfig(
        str(repository),
        http_port=0,
        grpc_port=0,
        metrics_port=0,
        token=ApiToken(TRITON_TEST_TOKEN),
    )
    server = TritonServer(config)
    with pytest.raises(ServeError) as failed:
        server.start()
    message = str(failed.value)
    assert "model 'my-detection-model' version 1 failed to load" in message
    assert "weights file model.onnx is missing" in message
    assert "tritonserver.log" in message
    assert TRITON_TEST_TOKEN not in message
    assert not server.is_alive()


def test_port_already_in_use_names_the_port_and_its_flag(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = ServeConfig(
            str(write_echo_repository(tmp_path / "r")), http_port=port, grpc_port=0, metrics_port=0
        )
        with pytest.raises(
            ServeError, match=rf"HTTP port {port} \(--http-port\) is already in use"
        ):
            TritonServer(config).start()


def test_metrics_port_taken_between_check_and_bind_is_reported_from_tritons_log(
    tmp_path, monkeypatch
):
    # Triton keeps running without a metrics service it could not start: we refuse that.
    monkeypatch.setattr(server_module, "port_in_use", lambda host, port: False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = ServeConfig(
            str(write_echo_repository(tmp_path / "r")), http_port=0, grpc_port=0, metrics_port=port
        )
        server = TritonServer(config)
        with pytest.raises(ServeError, match=rf"metrics port {port} \(--metrics-port\)"):
            server.start()
    assert not server.is_alive()


def test_empty_repository_is_refused_before_start(tmp_path):
    with pytest.raises(RepositoryError, match="holds no model folder"):
        TritonServer(ServeConfig(str(tmp_path), http_port=0, grpc_port=0, metrics_port=0)).start()


def test_poll_mode_serves_a_second_exported_version(
    tmp_path, tiny_model_repository, tiny_checkpoint, triton_server_factory
):
    repository = tmp_path / "model_repository"
    shutil.copytree(tiny_model_repository, repository)
    server = triton_server_factory(repository, poll=True, poll_interval_s=1)
    assert server.models == {DEFAULT_MODEL_NAME: (1,)}
    client = httpclient.InferenceServerClient(server.endpoints.http)

    export_tiny(repository, tiny_checkpoint)

    deadline = time.monotonic() + 60
    while not client.is_model_ready(DEFAULT_MODEL_NAME, "2"):
        assert time.monotonic() < deadline, (
            f"version 2 not served after 60 s: {server.refresh_models()}"
        )
        time.sleep(0.5)
    request = httpclient.InferInput(IMAGE.name, [3, 64, 64], IMAGE.datatype)
    request.set_data_from_numpy(np.zeros((3, 64, 64), np.uint8), binary_data=True)
    response = client.infer(DEFAULT_MODEL_NAME, [request], model_version="2").get_response()
    assert response["model_version"] == "2"
    assert server.refresh_models()[DEFAULT_MODEL_NAME][-1] == 2
