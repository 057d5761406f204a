"""Unit tests of the python-backend model's input checks (the server test runs it for real)."""

from __future__ import annotations

import numpy as np
import pytest

from export.triton_python_model import check_image

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
