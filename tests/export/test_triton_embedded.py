"""The embedded flavour of an exported repository in the real Triton binary (nvidia-pytriton)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detstack.contract import DEFAULT_MODEL_NAME, LABEL_MAP_PARAMETER
from tests.fixtures.models import TINY_BACKGROUND, TINY_COLORS, TINY_DATASET_IDS

pytestmark = [pytest.mark.slow, pytest.mark.triton]


def rectangle(category: int, width: int = 72, height: int = 64) -> np.ndarray:
    image = np.full((height, width, 3), TINY_BACKGROUND, np.uint8)
    image[16:44, 20:52] = TINY_COLORS[category]
    return np.ascontiguousarray(image.transpose(2, 0, 1))


@pytest.fixture(scope="module")
def server(triton_server, tiny_model_repository):
    """The session Triton server, which serves ``tiny_model_repository`` (the exported tiny
    model, embedded flavour: ``detstack serve`` selects configs/embedded.pbtxt)."""
    return triton_server


def http_infer(client, image: np.ndarray):
    import tritonclient.http as http

    tensor = http.InferInput("image", list(image.shape), "UINT8")
    tensor.set_data_from_numpy(image, binary_data=True)
    outputs = [
        http.InferRequestedOutput(n, binary_data=True) for n in ("boxes", "scores", "labels")
    ]
    return client.infer(DEFAULT_MODEL_NAME, [tensor], outputs=outputs)


def test_embedded_flavour_loads_and_describes_itself(server, tiny_model_repository):
    import tritonclient.http as http

    client = http.InferenceServerClient(server.endpoints.http)
    assert client.is_model_ready(DEFAULT_MODEL_NAME, "1")
    config = client.get_model_config(DEFAULT_MODEL_NAME)
    assert config["backend"] == "python"
    label_map = json.loads(config["parameters"][LABEL_MAP_PARAMETER]["string_value"])
    manifest = json.loads(
        (tiny_model_repository / DEFAULT_MODEL_NAME / "1" / "manifest.json").read_text()
    )
    assert label_map == {"1": manifest["label_map"]}


def test_embedded_flavour_answers_like_onnxruntime_with_dataset_ids(server, tiny_model_repository):
    import onnxruntime
    import tritonclient.http as http

    client = http.InferenceServerClient(server.endpoints.http)
    session = onnxruntime.InferenceSession(
        str(tiny_model_repository / DEFAULT_MODEL_NAME / "1" / "model.onnx"),
        providers=["CPUExecutionProvider"],
    )
    for category, dataset_id in enumerate(TINY_DATASET_IDS):
        image = rectangle(category)
        result = http_infer(client, image)
        boxes, scores, labels = (result.as_numpy(n) for n in ("boxes", "scores", "labels"))
        assert (boxes.dtype, scores.dtype, labels.dtype) == (np.float32, np.float32, np.int64)
        assert labels[np.argmax(scores)] == dataset_id
        expected = session.run(None, {"image": image})
        np.testing.assert_allclose(boxes, expected[0], atol=1e-3)
        np.testing.assert_array_equal(labels, expected[2])
        assert result.get_response()["model_version"] == "1"
    empty = http_infer(client, np.full((3, 40, 56), 128, np.uint8))
    assert empty.as_numpy("boxes").shape == (0, 4) and empty.as_numpy("labels").shape == (0,)


def test_a_bad_image_gets_invalid_argument_for_that_request_only(server):
    import tritonclient.grpc as grpc
    import tritonclient.http as http
    from tritonclient.utils import InferenceServerException

    client = http.InferenceServerClient(server.endpoints.http, concurrency=4)
    good, bad = rectangle(0), np.zeros((3, 4, 300), np.uint8)

    def request(image):
        tensor = http.InferInput("image", list(image.shape), "UINT8")
        tensor.set_data_from_numpy(image, binary_data=True)
        return client.async_infer(DEFAULT_MODEL_NAME, [tensor])

    pending = [request(image) for image in (good, bad, good, bad)]
    results = []
    for handle in pending:
        try:
            results.append(handle.get_result())
        except InferenceServerException as error:
            results.append(error)
    assert [isinstance(r, InferenceServerException) for r in results] == [False, True, False, True]
    assert results[1].status() == "400"
    assert "300x4 pixels is too small" in results[1].message()
    assert results[0].as_numpy("labels")[np.argmax(results[0].as_numpy("scores"))] == 0

    grpc_client = grpc.InferenceServerClient(server.endpoints.grpc)
    tensor = grpc.InferInput("image", [3, 10, 10], "UINT8")
    tensor.set_data_from_numpy(np.zeros((3, 10, 10), np.uint8))
    with pytest.raises(InferenceServerException) as caught:
        grpc_client.infer(DEFAULT_MODEL_NAME, [tensor])
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert client.is_model_ready(DEFAULT_MODEL_NAME)
    assert http_infer(client, good).as_numpy("scores").size > 0
    client.close()
