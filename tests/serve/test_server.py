"""Integration tests: the embedded tritonserver started by serve.TritonServer answers for real."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from detstack.contract import BOXES, DEFAULT_MODEL_NAME, IMAGE, LABELS, SCORES
from tests.fixtures.triton import write_echo_repository

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


def test_models_import_packages_from_any_entry_of_the_running_interpreters_path(
    tmp_path, monkeypatch, triton_server_factory
):
    # A package reachable only through our sys.path (like a --user, conda or PYTHONPATH install):
    # Triton's python-backend stub ignores PYTHONPATH, so serve must carry the path over itself.
    packages = tmp_path / "elsewhere"
    packages.mkdir()
    (packages / "detstack_probe_package.py").write_text("LABEL = 42\n")
    monkeypatch.syspath_prepend(str(packages))
    repository = write_echo_repository(tmp_path / "repository")
    model = repository / DEFAULT_MODEL_NAME / "1" / "model.py"
    source = model.read_text().replace(
        "import numpy as np\n", "import detstack_probe_package\nimport numpy as np\n", 1
    )
    source = source.replace("np.array([self.label]", "np.array([detstack_probe_package.LABEL]", 1)
    model.write_text(source)

    server = triton_server_factory(repository)

    client = httpclient.InferenceServerClient(server.endpoints.http)
    request = httpclient.InferInput(IMAGE.name, [3, 8, 8], IMAGE.datatype)
    request.set_data_from_numpy(np.zeros((3, 8, 8), np.uint8), binary_data=True)
    assert client.infer(DEFAULT_MODEL_NAME, [request]).as_numpy(LABELS.name).tolist() == [42]
