"""Integration tests: the embedded tritonserver started by serve.TritonServer answers for real."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from detstack.contract import BOXES, DEFAULT_MODEL_NAME, IMAGE, LABELS, SCORES

pytestmark = [pytest.mark.triton, pytest.mark.slow]


def _image(height: int = 48, width: int = 64) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, size=(3, height, width), dtype=np.uint8)


def test_server_reports_ready_with_every_model_loaded(triton_server):
    client = httpclient.InferenceServerClient(triton_server.endpoints.http)
    assert client.is_server_ready()
    assert client.is_model_ready(DEFAULT_MODEL_NAME)
    assert DEFAULT_MODEL_NAME in triton_server.models


def test_inference_over_http_returns_the_contract_tensors(triton_server):
    client = httpclient.InferenceServerClient(triton_server.endpoints.http)
    request = httpclient.InferInput(IMAGE.name, [3, 48, 64], IMAGE.datatype)
    request.set_data_from_numpy(_image(), binary_data=True)
    result = client.infer(DEFAULT_MODEL_NAME, [request])
    boxes = result.as_numpy(BOXES.name)
    assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 4
    assert result.as_numpy(SCORES.name).dtype == np.float32
    assert result.as_numpy(LABELS.name).dtype == np.int64


def test_inference_over_grpc_returns_the_contract_tensors(triton_server):
    client = grpcclient.InferenceServerClient(triton_server.endpoints.grpc)
    request = grpcclient.InferInput(IMAGE.name, [3, 48, 64], IMAGE.datatype)
    request.set_data_from_numpy(_image())
    result = client.infer(DEFAULT_MODEL_NAME, [request])
    assert result.as_numpy(BOXES.name).shape[1] == 4
    assert len(result.as_numpy(SCORES.name)) == len(result.as_numpy(LABELS.name))
