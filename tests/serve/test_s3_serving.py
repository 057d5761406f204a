"""Integration test: Triton serves a model repository straight from an S3-compatible store."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as httpclient

from detstack.contract import BOXES, DEFAULT_MODEL_NAME, IMAGE
from tests.fixtures.triton import write_echo_repository

pytestmark = [pytest.mark.triton, pytest.mark.s3, pytest.mark.slow]


def test_server_loads_and_answers_from_an_s3_repository(s3_server, tmp_path, triton_server_factory):
    local = write_echo_repository(tmp_path / "repository")
    url = s3_server.upload_dir(local, s3_server.unique_bucket("models"), "detection/repository")

    server = triton_server_factory(url, s3_endpoint_url=s3_server.endpoint_url)

    assert server.models == {DEFAULT_MODEL_NAME: (1,)}
    client = httpclient.InferenceServerClient(server.endpoints.http)
    request = httpclient.InferInput(IMAGE.name, [3, 20, 30], IMAGE.datatype)
    request.set_data_from_numpy(np.zeros((3, 20, 30), np.uint8))
    boxes = client.infer(DEFAULT_MODEL_NAME, [request]).as_numpy(BOXES.name)
    assert boxes.shape == (1, 4)
