"""The decode-on-GPU ensemble loads and answers in the real Triton (2.51), DALI and GPU aside.

The embedded tritonserver has neither the DALI nor the onnxruntime backend, and there is no GPU
here. So the test serves the GPU flavour of a repository written by ``export --gpu-decode`` with
two steps swapped for python-backend stand-ins that keep the generated configs' inputs, outputs
and reshape (only backend and instance kind change): ``-decode`` decodes with Pillow,
``-detector`` answers one box covering the image it receives. Everything else is export's own
output: the ensemble config, the gate's ``model.py`` with its vendored wire module. Triton then
checks the ensemble (tensor names, types and shapes between steps) and the detector's reshape at
load time, applies the reshape per request, and the gate's refusals travel back through the
ensemble as HTTP 400.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detstack.contract import DEFAULT_MODEL_NAME
from export.repository import VersionContent, write_version
from export.samples import SampleImage
from export.triton_config import ConfigOptions, parse_pbtxt, to_pbtxt

pytestmark = [pytest.mark.slow, pytest.mark.triton]

NAME = DEFAULT_MODEL_NAME

_DECODE_STAND_IN = '''"""Stand-in for the DALI step: image_file [1, n] -> image [1, 3, H, W]."""
import io

import numpy as np
import triton_python_backend_utils as pb_utils
from PIL import Image, ImageOps


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "image_file").as_numpy()
            assert data.shape[0] == 1, data.shape
            image = ImageOps.exif_transpose(Image.open(io.BytesIO(data.tobytes()))).convert("RGB")
            chw = np.ascontiguousarray(np.asarray(image).transpose(2, 0, 1)[None])
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("image", chw)]))
        return responses
'''

_DETECTOR_STAND_IN = '''"""Stand-in for the ONNX step: a box as big as its [3, H, W] input."""
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            image = pb_utils.get_input_tensor_by_name(request, "image").as_numpy()
            if image.ndim != 3:  # the config's reshape must have turned [1, 3, H, W] into this
                raise RuntimeError(f"detector got shape {list(image.shape)}")
            _, height, width = image.shape
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("boxes", np.array([[0, 0, width, height]], np.float32)),
                pb_utils.Tensor("scores", np.array([0.9], np.float32)),
                pb_utils.Tensor("labels", np.array([7], np.int64)),
            ]))
        return responses
'''


def _as_python_stand_in(model_dir: Path, source: str) -> None:
    """Keep the generated config's tensors (and reshape); run a python model on the CPU."""
    from tritonclient.grpc import model_config_pb2 as pb

    config = parse_pbtxt((model_dir / "config.pbtxt").read_text(encoding="utf-8"))
    config.backend = "python"
    config.ClearField("default_model_filename")
    config.ClearField("optimization")
    for group in config.instance_group:
        group.kind = pb.ModelInstanceGroup.KIND_CPU
    text = to_pbtxt(config)
    for path in (model_dir / "config.pbtxt", model_dir / "configs" / "gpu.pbtxt"):
        path.write_text(text)
    for version in (p for p in model_dir.iterdir() if p.name.isdigit()):
        (version / "model.py").write_text(source)


@pytest.fixture
def gpu_decode_server(tmp_path, triton_server_factory, monkeypatch):
    import serve._server as server_module
    from serve._repository import served_repository

    repository = tmp_path / "model_repository"
    onnx = tmp_path / "graph.onnx"
    onnx.write_bytes(b"graph")
    samples = [SampleImage("sample0.png", np.zeros((6, 8, 3), np.uint8), b"png", "")]
    content = VersionContent(onnx, {}, samples, {7: {"name": "thing", "color": "#e6194b"}})
    write_version(repository, NAME, content, ConfigOptions(gpu_decode=True, max_file_bytes=5000))
    _as_python_stand_in(repository / f"{NAME}-decode", _DECODE_STAND_IN)
    _as_python_stand_in(repository / f"{NAME}-detector", _DETECTOR_STAND_IN)
    # The embedded server's pre-check knows only the python backend; Triton checks the rest.
    monkeypatch.setattr(
        server_module, "served_repository", lambda config, _: served_repository(config, None)
    )
    return triton_server_factory(repository, model_config_name="gpu")


def _jpeg(width: int, height: int, orientation: int | None = None) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (height, width, 3), np.uint8)
    buffer = io.BytesIO()
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    Image.fromarray(pixels).save(buffer, format="JPEG", exif=exif)
    return buffer.getvalue()


def _infer(server, payload: bytes):
    import tritonclient.http as http

    client = http.InferenceServerClient(server.endpoints.http)
    request = http.InferInput("image_bytes", [1], "BYTES")
    request.set_data_from_numpy(np.array([payload], dtype=object))
    return client.infer(NAME, [request])


def test_the_ensemble_loads_in_triton_and_answers_raw_and_base64_files(gpu_decode_server):
    assert set(gpu_decode_server.models) == {
        NAME,
        f"{NAME}-gate",
        f"{NAME}-decode",
        f"{NAME}-detector",
    }
    result = _infer(gpu_decode_server, _jpeg(40, 24))
    np.testing.assert_array_equal(result.as_numpy("boxes"), [[0, 0, 40, 24]])
    np.testing.assert_array_equal(result.as_numpy("labels"), [7])
    # The seed's base64 text, and a photo whose EXIF says to display it turned: 24x40 upright.
    result = _infer(gpu_decode_server, base64.b64encode(_jpeg(40, 24, orientation=6)))
    np.testing.assert_array_equal(result.as_numpy("boxes"), [[0, 0, 24, 40]])


def test_the_gates_refusals_come_back_through_the_ensemble_as_400_with_the_reason(
    gpu_decode_server,
):
    from tritonclient.utils import InferenceServerException

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="GIF")
    for payload, reason in [
        (buffer.getvalue(), "the payload is a GIF file"),
        (b"plain text, no image\x00", "not an image file"),
        (_jpeg(200, 200), "exceeds the limit of 5000 bytes"),
    ]:
        with pytest.raises(InferenceServerException) as raised:
            _infer(gpu_decode_server, payload)
        assert raised.value.status() == "400", raised.value
        assert reason in raised.value.message()
    assert _infer(gpu_decode_server, _jpeg(16, 16)).as_numpy("boxes").shape == (1, 4)


def test_our_client_sends_files_to_the_ensemble_and_pixels_to_the_detector_it_names(
    gpu_decode_server,
):
    import pandas as pd

    from client import DetectionClient
    from client.codec import encode_image, revert_predict_to_array, row_errors

    frame = pd.DataFrame({"image_data": [encode_image(_jpeg(40, 24))]})
    for wire in ("encoded", "pixels"):
        with DetectionClient(gpu_decode_server.endpoints.grpc, wire=wire) as client:
            # Pixels travel as [1, 3, H, W] to <name>-detector, which the ensemble's config
            # names; files go to the ensemble. The stand-in answers a box as big as the image.
            answer = client.infer_chw(np.zeros((3, 24, 40), np.uint8)).detections
            np.testing.assert_array_equal(answer.boxes, [[0, 0, 40, 24]])
            assert list(answer.names) == ["thing"]
            result = client.predict(frame)
            assert row_errors(result) == {}, wire
            boxes = revert_predict_to_array(result)["boxes"].iloc[0]
            np.testing.assert_array_equal(np.asarray(boxes).reshape(-1, 4), [[0, 0, 40, 24]])
