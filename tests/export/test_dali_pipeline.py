"""The decode sibling's DALI pipeline decodes like detstack's image policy (on the CPU here).

:mod:`export.dali_pipeline` is built with ``device="cpu"`` and ``device_id=None`` (DALI runs
without a GPU that way) and fed real JPEG and PNG files made with Pillow; its CHW output is
compared with :func:`detstack.images.decode_image`: PNG exactly, JPEG within a small tolerance
(libjpeg-turbo in DALI and in Pillow may upsample chroma differently), EXIF orientation applied.
The served pipeline (``device="mixed"``, nvJPEG) needs a GPU and is not run here; its
``@autoserialize`` definition is serialized, as Triton's DALI backend does at load time.

DALI is a 400 MB wheel that detstack does not depend on, so the pipeline runs in a separate
interpreter: ``DETSTACK_DALI_PYTHON`` (a venv with ``nvidia-dali-cuda120`` and numpy), else this
one. The test is skipped, with that reason, when neither can import ``nvidia.dali``.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detstack.images import decode_image

PIPELINE = Path(__file__).resolve().parents[2] / "export" / "dali_pipeline.py"
DALI_PYTHON = os.environ.get("DETSTACK_DALI_PYTHON") or sys.executable

_RUNNER = r"""
import importlib.util, json, sys
import numpy as np
pipeline_file, out_dir = sys.argv[1], sys.argv[2]
files = json.loads(sys.argv[3])
spec = importlib.util.spec_from_file_location("dali", pipeline_file)  # as the backend loads it
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
pipe = module.build_pipeline(device="cpu", device_id=None)
pipe.build()
for index, path in enumerate(files):
    data = np.fromfile(path, dtype=np.uint8)
    (output,) = pipe.run(**{module.INPUT_NAME: [data]})
    np.save(f"{out_dir}/decoded{index}.npy", output.as_array())
from nvidia.dali._utils.autoserialize import _discover_autoserialize
marked = _discover_autoserialize(module, visited=[])
# What the DALI backend serializes at load; device_id=None only because there is no GPU here.
marked[0](device_id=None).serialize(filename=f"{out_dir}/model.dali")
print(json.dumps({"marked": [f.__name__ for f in marked]}))
"""


def _dali_importable() -> bool:
    try:
        completed = subprocess.run(
            [DALI_PYTHON, "-c", "import nvidia.dali"], capture_output=True, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return completed.returncode == 0


pytestmark = pytest.mark.skipif(
    not _dali_importable(),
    reason=f"nvidia.dali is not importable by {DALI_PYTHON}: set DETSTACK_DALI_PYTHON to a "
    "python that has it (python3 -m venv V && V/bin/pip install numpy nvidia-dali-cuda120)",
)


def _photo(width: int, height: int) -> np.ndarray:
    """A smooth image with edges (JPEG-friendly, so the tolerance stays meaningful)."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 // width, y * 255 // height, (x + y) * 127 // (width + height)], -1)
    image[height // 4 : height // 2, width // 3 : width // 2] = (240, 30, 30)
    return image.astype(np.uint8)


def _files(tmp_path: Path) -> dict[str, bytes]:
    files = {}
    photo = Image.fromarray(_photo(96, 64))
    for name, kwargs in {
        "png": {"format": "PNG"},
        "jpeg": {"format": "JPEG", "quality": 95},
        "jpeg-420": {"format": "JPEG", "quality": 90, "subsampling": 2},
    }.items():
        buffer = io.BytesIO()
        photo.save(buffer, **kwargs)
        files[name] = buffer.getvalue()
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=95, exif=exif)
    files["jpeg-exif-rotated"] = buffer.getvalue()
    return files


@pytest.fixture(scope="module")
def decoded(tmp_path_factory) -> tuple[dict[str, bytes], dict[str, np.ndarray], dict]:
    tmp_path = tmp_path_factory.mktemp("dali")
    files = _files(tmp_path)
    paths = []
    for name, data in files.items():
        path = tmp_path / f"{name}.bin"
        path.write_bytes(data)
        paths.append(str(path))
    completed = subprocess.run(
        [DALI_PYTHON, "-c", _RUNNER, str(PIPELINE), str(tmp_path), json.dumps(paths)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    info = json.loads(completed.stdout.splitlines()[-1])
    info["serialized"] = (tmp_path / "model.dali").read_bytes()
    outputs = {name: np.load(tmp_path / f"decoded{i}.npy") for i, name in enumerate(files)}
    return files, outputs, info


def _reference(data: bytes) -> np.ndarray:
    return decode_image(data).transpose(2, 0, 1)[None]  # HWC -> DALI's [1, 3, H, W]


def test_png_decodes_exactly_as_detstacks_policy(decoded):
    files, outputs, _ = decoded
    assert outputs["png"].dtype == np.uint8
    assert outputs["png"].shape == (1, 3, 64, 96)
    np.testing.assert_array_equal(outputs["png"], _reference(files["png"]))


@pytest.mark.parametrize("name", ["jpeg", "jpeg-420"])
def test_jpeg_decodes_within_a_small_tolerance_of_detstacks_policy(decoded, name):
    files, outputs, _ = decoded
    reference = _reference(files[name])
    assert outputs[name].shape == reference.shape == (1, 3, 64, 96)
    difference = np.abs(outputs[name].astype(np.int16) - reference)
    assert difference.mean() < 1.0 and difference.max() <= 16, (difference.mean(), difference.max())


def test_exif_orientation_is_applied_like_detstacks_policy(decoded):
    files, outputs, _ = decoded
    reference = _reference(files["jpeg-exif-rotated"])
    assert reference.shape == (1, 3, 96, 64)  # displayed upright: portrait
    assert outputs["jpeg-exif-rotated"].shape == reference.shape
    difference = np.abs(outputs["jpeg-exif-rotated"].astype(np.int16) - reference)
    assert difference.mean() < 1.0


def test_the_served_pipeline_is_the_one_autoserialize_target_and_serializes(decoded):
    _, _, info = decoded
    assert info["marked"] == ["pipeline"]
    assert b"image_file" in info["serialized"]
    assert b"decoders__Image" in info["serialized"] or b"ImageDecoder" in info["serialized"]
    assert b"mixed" in info["serialized"]  # the GPU (nvJPEG) decoder is what gets served
