"""Integration tests: the API token on a real Triton, on both protocols; health stays open."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from detstack.contract import BOXES, DEFAULT_MODEL_NAME, IMAGE
from serve import token_headers
from tests.fixtures.triton import TRITON_TEST_TOKEN

pytestmark = [pytest.mark.triton, pytest.mark.slow]

WRONG = "not-the-token-0123456789abcdef"
# (label, headers) for each protocol: missing, wrong value, right value on the HTTP-only key.
REFUSED_HTTP = [("missing", None), ("wrong", token_headers(WRONG, "http"))]
REFUSED_GRPC = [
    ("missing", None),
    ("wrong", token_headers(WRONG, "grpc")),
    (
        "right token without the triton-grpc-protocol- prefix",
        token_headers(TRITON_TEST_TOKEN, "http"),
    ),
]


def _http_infer(server, headers):
    client = httpclient.InferenceServerClient(server.endpoints.http)
    request = httpclient.InferInput(IMAGE.name, [3, 16, 16], IMAGE.datatype)
    request.set_data_from_numpy(np.zeros((3, 16, 16), np.uint8), binary_data=True)
    return client.infer(DEFAULT_MODEL_NAME, [request], headers=headers)


def _grpc_infer(server, headers):
    client = grpcclient.InferenceServerClient(server.endpoints.grpc)
    request = grpcclient.InferInput(IMAGE.name, [3, 16, 16], IMAGE.datatype)
    request.set_data_from_numpy(np.zeros((3, 16, 16), np.uint8))
    return client.infer(DEFAULT_MODEL_NAME, [request], headers=headers)


@pytest.mark.parametrize(("case", "headers"), REFUSED_HTTP, ids=[c for c, _ in REFUSED_HTTP])
def test_http_inference_is_refused_with_403_when_token_is_missing_or_wrong(
    triton_server_with_token, case, headers
):
    with pytest.raises(InferenceServerException) as refused:
        _http_infer(triton_server_with_token, headers)
    assert refused.value.status() == "403"
    assert "authorization" in refused.value.message()
    assert TRITON_TEST_TOKEN not in str(refused.value)


@pytest.mark.parametrize(("case", "headers"), REFUSED_GRPC, ids=[c for c, _ in REFUSED_GRPC])
def test_grpc_inference_is_refused_when_token_is_missing_wrong_or_unprefixed(
    triton_server_with_token, case, headers
):
    with pytest.raises(InferenceServerException) as refused:
        _grpc_infer(triton_server_with_token, headers)
    assert refused.value.status() == "StatusCode.UNAVAILABLE"
    assert "triton-grpc-protocol-authorization" in refused.value.message()


def test_right_token_is_accepted_on_http_and_grpc(triton_server_with_token):
    server = triton_server_with_token
    assert _http_infer(server, server.request_headers("http")).as_numpy(BOXES.name).shape[1] == 4
    assert _grpc_infer(server, server.request_headers("grpc")).as_numpy(BOXES.name).shape[1] == 4


def test_metadata_config_statistics_and_repository_apis_need_the_token(triton_server_with_token):
    client = httpclient.InferenceServerClient(triton_server_with_token.endpoints.http)
    calls = [
        lambda h: client.get_server_metadata(headers=h),
        lambda h: client.get_model_metadata(DEFAULT_MODEL_NAME, headers=h),
        lambda h: client.get_model_config(DEFAULT_MODEL_NAME, headers=h),
        lambda h: client.get_inference_statistics(DEFAULT_MODEL_NAME, headers=h),
        lambda h: client.get_model_repository_index(headers=h),
    ]
    headers = triton_server_with_token.request_headers("http")
    for call in calls:
        with pytest.raises(InferenceServerException, match="restricted"):
            call(None)
        assert call(headers) is not None


def test_health_stays_open_without_token_on_both_protocols(triton_server_with_token):
    http = httpclient.InferenceServerClient(triton_server_with_token.endpoints.http)
    grpc = grpcclient.InferenceServerClient(triton_server_with_token.endpoints.grpc)
    assert http.is_server_live() and http.is_server_ready()
    assert http.is_model_ready(DEFAULT_MODEL_NAME)
    assert grpc.is_server_live() and grpc.is_server_ready()
    assert grpc.is_model_ready(DEFAULT_MODEL_NAME)


def test_shared_memory_is_locked_even_with_the_token(triton_server_with_token):
    client = httpclient.InferenceServerClient(triton_server_with_token.endpoints.http)
    with pytest.raises(InferenceServerException, match="detstack-api-disabled"):
        client.get_system_shared_memory_status(headers=triton_server_with_token.request_headers())


def test_without_token_inference_is_open_but_shared_memory_and_logging_are_locked(triton_server):
    assert _http_infer(triton_server, None).as_numpy(BOXES.name).shape[1] == 4
    client = httpclient.InferenceServerClient(triton_server.endpoints.http)
    with pytest.raises(InferenceServerException, match="detstack-api-disabled"):
        client.get_system_shared_memory_status()
    with pytest.raises(InferenceServerException, match="detstack-api-disabled"):
        client.update_log_settings({"log_verbose_level": 1})


def test_token_is_in_no_file_the_server_writes(triton_server_with_token):
    _http_infer(triton_server_with_token, triton_server_with_token.request_headers("http"))
    for path in triton_server_with_token.run_dir.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert TRITON_TEST_TOKEN.encode() not in path.read_bytes(), path
