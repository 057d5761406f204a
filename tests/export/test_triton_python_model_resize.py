"""The served runtime resizes large images to the working size and answers in their pixels."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from detstack.contract import DEFAULT_MODEL_NAME
from export.triton_python_model import DetectorRuntime, TritonPythonModel, scale_boxes
from tests.export._fakes import RecordingSession
from tests.fixtures.models import tiny_shape_image

LIMITS = {"min_side": 16, "max_side": 8192, "max_pixels": 40_000_000}


def _jpeg(width, height):
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 200)).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_a_large_file_reaches_the_graph_at_the_working_size_and_boxes_come_back_in_its_pixels():
    session = RecordingSession()
    runtime = DetectorRuntime(session, min_size=128, max_size=200, **LIMITS)
    boxes, _, labels = runtime.detect_encoded(_jpeg(1600, 1200))
    # 1600x1200 x 0.1067 = 170x128 as torchvision floors it, in 2x2 blocks the graph halves
    assert session.shapes == [(3, 256, 340)]
    np.testing.assert_allclose(boxes, [[0, 0, 1600, 1200]], rtol=1e-6)
    assert boxes.dtype == np.float32 and labels.tolist() == [7]


def test_large_pixels_reach_the_graph_at_the_working_size_too():
    session = RecordingSession()
    runtime = DetectorRuntime(session, min_size=128, max_size=200, **LIMITS)
    pixels = np.full((3, 1200, 1600), 77, np.uint8)
    boxes, _, _ = runtime.detect_pixels(pixels)
    assert session.shapes == [(3, 256, 340)]
    np.testing.assert_allclose(boxes, [[0, 0, 1600, 1200]], rtol=1e-6)


def test_small_images_and_a_runtime_without_resize_leave_the_resize_to_the_graph():
    session = RecordingSession()
    DetectorRuntime(session, min_size=128, max_size=200, **LIMITS).detect_encoded(_jpeg(300, 200))
    DetectorRuntime(session, min_size=128, max_size=200, resize=False, **LIMITS).detect_encoded(
        _jpeg(1600, 1200)
    )
    DetectorRuntime(session, min_size=0, max_size=0, **LIMITS).detect_pixels(
        np.zeros((3, 1200, 1600), np.uint8)
    )
    assert session.shapes == [(3, 200, 300), (3, 1200, 1600), (3, 1200, 1600)]


def test_boxes_are_scaled_back_per_axis_and_clipped_to_the_original():
    boxes = np.array([[10, 20, 128, 96], [0, 0, 64.5, 48.25]], np.float32)
    scaled, _, _ = scale_boxes((boxes, None, None), (4000, 3000), (128, 96))
    ratio_x, ratio_y = np.float32(4000) / np.float32(128), np.float32(3000) / np.float32(96)
    np.testing.assert_array_equal(scaled[1], np.float32([0, 0, 64.5 * ratio_x, 48.25 * ratio_y]))
    np.testing.assert_array_equal(scaled[0], np.float32([312.5, 625, 4000, 3000]))
    empty, _, _ = scale_boxes((np.zeros((0, 4), np.float32), None, None), (4000, 3000), (128, 96))
    assert empty.shape == (0, 4) and empty.dtype == np.float32


@pytest.fixture(scope="module")
def tiny_graph(tiny_model_repository):
    import onnxruntime

    path = tiny_model_repository / DEFAULT_MODEL_NAME / "1" / "model.onnx"
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _eager(checkpoint, pixels):
    import torch

    from export.adapter import adapter_from_checkpoint
    from training.checkpoint import load_checkpoint

    adapter = adapter_from_checkpoint(load_checkpoint(checkpoint))
    with torch.no_grad():
        outputs = adapter(torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))))
    return [value.numpy() for value in outputs]


def test_served_detections_on_a_large_photo_agree_with_eager_pytorch_on_the_full_photo(
    tiny_graph, tiny_checkpoint
):
    image, _, _ = tiny_shape_image(np.random.default_rng(5), max_shapes=2)
    big = np.asarray(Image.fromarray(image).resize((640, 480), Image.Resampling.BICUBIC))
    buffer = io.BytesIO()
    Image.fromarray(big).save(buffer, format="PNG")
    runtime = DetectorRuntime(tiny_graph, min_size=64, max_size=64, **LIMITS)
    eager_boxes, eager_scores, eager_labels = _eager(tiny_checkpoint, big)
    assert (eager_scores > 0.3).any()  # the tiny model finds the rectangles
    for boxes, scores, labels in (
        runtime.detect_encoded(buffer.getvalue()),
        runtime.detect_pixels(np.ascontiguousarray(big.transpose(2, 0, 1))),
    ):
        confident = eager_scores > 0.3
        assert labels[: confident.sum()].tolist() == eager_labels[confident].tolist()
        np.testing.assert_allclose(scores[: confident.sum()], eager_scores[confident], atol=0.02)
        np.testing.assert_allclose(boxes[: confident.sum()], eager_boxes[confident], atol=2.0)


def test_the_config_parameter_server_resize_0_turns_the_resize_off(tiny_model_repository):
    def runtime(parameters):
        model = TritonPythonModel()
        config = {"parameters": {k: {"string_value": v} for k, v in parameters.items()}}
        model.initialize(
            {
                "model_config": json.dumps(config),
                "model_repository": str(tiny_model_repository / DEFAULT_MODEL_NAME),
                "model_version": "1",
            }
        )
        return model.runtime

    assert runtime({}).resize is True
    assert runtime({"server_resize": "0"}).resize is False
