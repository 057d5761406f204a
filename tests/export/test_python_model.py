"""Unit tests of the python-backend model's input checks (the server test runs it for real)."""

from __future__ import annotations

import numpy as np
import pytest

from export.triton_python_model import check_image
from tests.export._fakes import RecordingSession

LIMITS = {"min_side": 16, "max_side": 1024, "max_pixels": 500_000}


def test_a_uint8_chw_image_within_limits_is_accepted():
    assert check_image(np.zeros((3, 48, 64), np.uint8), **LIMITS) is None


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.zeros((3, 48, 64), np.float32), "must be UINT8, got float32"),
        (np.zeros((48, 64, 3), np.uint8), "shape [3, height, width], got [48, 64, 3]"),
        (np.zeros((3, 48), np.uint8), "got [3, 48]"),
        (np.zeros((3, 8, 64), np.uint8), "64x8 pixels is too small"),
        (np.zeros((3, 0, 64), np.uint8), "64x0 pixels is too small"),
        (np.zeros((3, 16, 2000), np.uint8), "2000x16 pixels is too large"),
        (np.zeros((3, 1000, 1000), np.uint8), "exceeds the limit of 500000 pixels"),
    ],
)
def test_a_bad_image_tensor_is_described(array, expected):
    assert expected in check_image(array, **LIMITS)


def _runtime(**overrides):
    from export.triton_python_model import DetectorRuntime

    settings = {
        "min_size": 128,
        "max_size": 200,
        "min_side": 16,
        "max_side": 8192,
        "max_pixels": 40_000_000,
    }
    settings.update(overrides)
    session = RecordingSession()
    return DetectorRuntime(session, **settings), session


def _jpeg(width, height):
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 200)).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_an_encoded_jpeg_is_detected_on_a_draft_and_answered_in_the_files_pixels():
    runtime, session = _runtime(draft=True, draft_margin=1)
    boxes, scores, labels = runtime.detect_encoded(_jpeg(1600, 1200))
    assert session.shapes == [(3, 150, 200)]  # decoded at 1/8 scale
    np.testing.assert_allclose(boxes, [[0, 0, 1600, 1200]])
    assert labels.tolist() == [7] and scores.dtype == np.float32


def test_a_version_without_a_recorded_resize_decodes_the_file_fully():
    runtime, session = _runtime(min_size=0, max_size=0)
    runtime.detect_encoded(_jpeg(400, 300))
    assert session.shapes == [(3, 300, 400)]


def test_an_encoded_file_outside_the_size_limits_is_refused_before_the_detector_runs():
    from export.triton_python_model import RequestError

    runtime, session = _runtime(max_side=1000)
    with pytest.raises(RequestError, match="1600x1200 pixels is too large"):
        runtime.detect_encoded(_jpeg(1600, 1200))
    with pytest.raises(RequestError, match="not an image in an accepted format"):
        runtime.detect_encoded(b"\x00\x01 not an image")
    with pytest.raises(RequestError, match="invalid base64"):
        runtime.detect_encoded(b"QUJD====")
    assert session.shapes == []
