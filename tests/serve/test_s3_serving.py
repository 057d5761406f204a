"""Integration tests: Triton serves a model repository straight from an S3-compatible store."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from detstack.contract import BOXES, DEFAULT_MODEL_NAME, IMAGE
from detstack.errors import RepositoryError, ServeError

pytestmark = [pytest.mark.triton, pytest.mark.s3, pytest.mark.slow]


def test_server_loads_and_answers_from_an_s3_repository(
    s3_server, tiny_model_repository, triton_server_factory
):
    url = s3_server.upload_dir(
        tiny_model_repository, s3_server.unique_bucket("models"), "prod/model_repository"
    )

    server = triton_server_factory(url, s3_endpoint_url=s3_server.endpoint_url)

    assert server.models == {DEFAULT_MODEL_NAME: (1,)}
    client = grpcclient.InferenceServerClient(server.endpoints.grpc)
    request = grpcclient.InferInput(IMAGE.name, [3, 64, 80], IMAGE.datatype)
    request.set_data_from_numpy(np.zeros((3, 64, 80), np.uint8))
    assert client.infer(DEFAULT_MODEL_NAME, [request]).as_numpy(BOXES.name).shape[1] == 4


def test_s3_prefix_without_models_is_an_error_not_an_empty_server(s3_server, triton_server_factory):
    bucket = s3_server.unique_bucket("empty")
    s3_server.put_bytes(bucket, "nothing/README.txt", b"no models here")
    with pytest.raises(RepositoryError, match=rf"s3://{bucket}/nothing holds no model"):
        triton_server_factory(f"s3://{bucket}/nothing", s3_endpoint_url=s3_server.endpoint_url)


def test_missing_s3_prefix_fails_start_with_tritons_reason(s3_server, triton_server_factory):
    bucket = s3_server.unique_bucket("missing")
    with pytest.raises(
        ServeError, match=rf"repository s3://{bucket}/absent.*not a valid directory"
    ):
        triton_server_factory(f"s3://{bucket}/absent", s3_endpoint_url=s3_server.endpoint_url)
