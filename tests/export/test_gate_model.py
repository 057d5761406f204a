"""The gate's model.py runs with the standard library and numpy only, as in NVIDIA's container.

Each test exports a real ``<name>-gate`` version (``write_version`` with ``gpu_decode``) and runs
its ``model.py`` in a fresh interpreter started without site-packages (``python -S``), whose
``sys.path`` holds the standard library, the version directory, numpy (linked alone into a
folder) and a stand-in for ``triton_python_backend_utils``: no Pillow, no installed detstack.
The model is fed requests the way Triton's python backend does and its answers are compared.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from export.repository import VersionContent, write_version
from export.samples import SampleImage
from export.triton_config import ConfigOptions

NAME = "gated"
MAX_FILE_BYTES = 4000

_STUB = '''"""Stand-in for Triton's python-backend utilities: what the gate's model.py calls."""


class TritonError:
    INVALID_ARG = "INVALID_ARG"
    INTERNAL = "INTERNAL"

    def __init__(self, message, code):
        self.message, self.code = message, code


class Tensor:
    def __init__(self, name, array):
        self.name, self.array = name, array

    def as_numpy(self):
        return self.array


class InferenceResponse:
    def __init__(self, output_tensors, error=None):
        self.output_tensors, self.error = output_tensors, error


def get_input_tensor_by_name(request, name):
    return request.get(name)
'''

_RUNNER = r"""
import importlib.util, json, sys
sys.path[:0] = sys.argv[1:4]
version_dir, config_json, payload_file = sys.argv[1], sys.argv[4], sys.argv[5]
spec = importlib.util.spec_from_file_location("model", version_dir + "/model.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
import numpy as np
import triton_python_backend_utils as pb_utils

blocked = []
for name in ("PIL", "onnxruntime", "tritonclient"):
    try:
        __import__(name)
    except ImportError:
        blocked.append(name)
import detstack.wire
model = module.TritonPythonModel()
model.initialize({"model_config": config_json})
payloads = json.load(open(payload_file))
requests = []
for item in payloads:
    elements = [e.encode("latin-1") for e in item]
    array = np.empty(len(elements), dtype=object)
    array[:] = elements
    requests.append({"image_bytes": pb_utils.Tensor("image_bytes", array)})
answers = []
for response in model.execute(requests):
    if response.error is not None:
        answers.append({"error": response.error.code, "message": response.error.message})
    else:
        (tensor,) = response.output_tensors
        answers.append({"name": tensor.name, "dtype": str(tensor.array.dtype),
                        "shape": list(tensor.array.shape),
                        "bytes": tensor.array.tobytes().decode("latin-1")})
print(json.dumps({"answers": answers, "blocked": blocked, "wire": detstack.wire.__file__}))
"""


def image_file(fmt: str, size=(24, 16), seed=0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def gate_version(tmp_path_factory) -> tuple[Path, str]:
    """A real exported gate version directory and the model config Triton would hand it."""
    from google.protobuf import json_format

    from export.gpu_decode import build_gate_config

    root = tmp_path_factory.mktemp("gate")
    onnx = root / "model.onnx"
    onnx.write_bytes(b"graph")
    samples = [SampleImage("sample0.png", np.zeros((6, 8, 3), np.uint8), b"png", "")]
    content = VersionContent(onnx, {}, samples, {1: {"name": "thing", "color": "#e6194b"}})
    options = ConfigOptions(gpu_decode=True, max_file_bytes=MAX_FILE_BYTES)
    write_version(root / "repo", NAME, content, options)
    config = build_gate_config(name=NAME, options=options)
    return root / "repo" / f"{NAME}-gate" / "1", json.dumps(
        json_format.MessageToDict(config, preserving_proto_field_name=True)
    )


def run_gate(gate_version, tmp_path: Path, payloads: list[list[bytes]]) -> dict:
    version_dir, config_json = gate_version
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "triton_python_backend_utils.py").write_text(_STUB)
    numpy_only = tmp_path / "numpy-only"
    numpy_only.mkdir()
    numpy_dir = Path(np.__file__).parent
    (numpy_only / "numpy").symlink_to(numpy_dir)
    libs = numpy_dir.parent / "numpy.libs"  # the wheel's bundled BLAS, when it has one
    if libs.is_dir():
        (numpy_only / "numpy.libs").symlink_to(libs)
    payload_file = tmp_path / "payloads.json"
    payload_file.write_text(json.dumps([[p.decode("latin-1") for p in item] for item in payloads]))
    completed = subprocess.run(
        [
            sys.executable,
            "-S",  # no site-packages: only what the arguments put on sys.path
            "-c",
            _RUNNER,
            str(version_dir),
            str(stub),
            str(numpy_only),
            config_json,
            str(payload_file),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.splitlines()[-1])


def test_gate_runs_without_pillow_or_detstack_and_passes_raw_bytes_base64_and_data_urls(
    gate_version, tmp_path
):
    jpeg, png = image_file("JPEG"), image_file("PNG")
    text = base64.b64encode(png)
    wrapped = b"\n".join(text[i : i + 76] for i in range(0, len(text), 76))  # `base64` output
    result = run_gate(
        gate_version,
        tmp_path,
        [[jpeg], [text], [b"data:image/png;base64," + text], [wrapped]],
    )
    # Nothing but the standard library, numpy and the vendored wire module.
    assert result["blocked"] == ["PIL", "onnxruntime", "tritonclient"]
    assert result["wire"] == str(gate_version[0] / "detstack" / "wire.py")
    files = [jpeg, png, png, png]
    for answer, expected in zip(result["answers"], files, strict=True):
        assert answer["name"] == "image_file"
        assert answer["dtype"] == "uint8"
        assert answer["shape"] == [1, len(expected)]  # DALI's unbatched [1, n]
        assert answer["bytes"].encode("latin-1") == expected


def test_gate_refuses_each_bad_request_alone_with_the_reason(gate_version, tmp_path):
    png = image_file("PNG")
    oversized = image_file("PNG", size=(64, 64), seed=1)  # 3x the limit: refused unread
    just_over = b"\xff\xd8\xff" + bytes(MAX_FILE_BYTES)  # its base64 text is decoded first
    assert len(oversized) > MAX_FILE_BYTES * 4 // 3 + 1024 and len(png) < MAX_FILE_BYTES
    payloads = [
        [b"hello, this is plain text and no image at all \x00\x01"],
        [oversized],
        [base64.b64encode(just_over)],
        [image_file("GIF")],
        [b"QUJD===="],
        [b""],
        [png, png],
        [png],
    ]
    answers = run_gate(gate_version, tmp_path, payloads)["answers"]
    expected = [
        "not an image file (first bytes b'hello, t')",
        f"payload of {len(oversized)} bytes exceeds the limit of {MAX_FILE_BYTES} bytes",
        f"image file of {len(just_over)} bytes exceeds the limit of {MAX_FILE_BYTES} bytes",
        "the payload is a GIF file; the GPU flavour decodes JPEG, PNG, BMP, TIFF, WEBP",
        "invalid base64",
        "empty image payload (0 bytes)",
        "must hold exactly one image file, got 2 elements",
    ]
    for answer, reason in zip(answers[:-1], expected, strict=True):
        assert answer["error"] == "INVALID_ARG", answer
        assert reason in answer["message"], answer
    assert answers[-1]["shape"] == [1, len(png)]  # the good request after them is answered
