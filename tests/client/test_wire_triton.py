"""The encoded wire against a real Triton: files in, boxes in the file's pixels out.

Every test talks to the session's Triton server, which serves the exported tiny model.
"""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from client import DetectionClient, encode_images, row_errors
from detstack.contract import DEFAULT_MODEL_NAME
from tests.fixtures.models import tiny_shape_image

pytestmark = [pytest.mark.triton, pytest.mark.slow]

PROTOCOLS = ("grpc", "http")


def _rectangles(seed: int, size: int = 64) -> np.ndarray:
    image, _, _ = tiny_shape_image(np.random.default_rng(seed), size=size)
    return image


def _encode(pixels: np.ndarray, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _address(server, protocol: str) -> str:
    return server.endpoints.grpc if protocol == "grpc" else server.endpoints.http


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_encoded_file_gets_the_same_detections_as_its_pixels(triton_server, protocol):
    files = [_encode(_rectangles(seed)) for seed in range(3)]
    with (
        DetectionClient(_address(triton_server, protocol), protocol=protocol) as encoded,
        (
            DetectionClient(_address(triton_server, protocol), protocol=protocol, wire="pixels")
        ) as pixels,
    ):
        encoded.wait_until_ready(timeout=30)
        by_file = encoded.predict_arrays(files)
        by_pixels = pixels.predict_arrays(files)
    assert any(len(d) for d in by_file), "the tiny model must find the rectangles"
    for a, b in zip(by_file, by_pixels, strict=True):
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
        np.testing.assert_array_equal(a.labels, b.labels)


def test_a_large_jpeg_is_answered_in_its_own_pixels(triton_server):
    small = _rectangles(4)
    large = np.asarray(Image.fromarray(small).resize((1024, 1024), Image.Resampling.NEAREST))
    with DetectionClient(triton_server.endpoints.grpc) as client:
        client.wait_until_ready(timeout=30)
        big, little = client.predict_arrays(
            [_encode(large, "JPEG", quality=95), _encode(small, "JPEG", quality=95)]
        )
    assert len(big) and len(little)
    # Same scene 16x larger: the served boxes scale with the file.
    best_big = big.boxes[np.argmax(big.scores)]
    best_little = little.boxes[np.argmax(little.scores)]
    np.testing.assert_allclose(best_big / 16, best_little, atol=3.0)
    assert best_big.max() <= 1024


def test_an_exif_rotated_photo_is_answered_in_the_oriented_pixels(triton_server):
    pixels = _rectangles(5, size=96)[:, :64]  # 64 wide, 96 high as a person sees it
    stored = np.ascontiguousarray(np.rot90(pixels, k=1))  # stored 96 wide, 64 high
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6  # display rotated 90° clockwise
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", exif=exif.tobytes())
    with DetectionClient(triton_server.endpoints.grpc) as client:
        client.wait_until_ready(timeout=30)
        (result,) = client.predict_arrays([buffer.getvalue()])
    assert len(result)
    assert result.boxes[:, [0, 2]].max() <= 64 + 1e-3
    assert result.boxes[:, [1, 3]].max() <= 96 + 1e-3


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_bad_files_fail_only_their_rows_with_the_servers_reason(triton_server, protocol):
    good = _encode(_rectangles(6))
    truncated = _encode(_rectangles(7))[:-40]
    frame = encode_images([good, truncated, b"GIF89a but not really", b"plain text"])
    frame.loc[9] = "not base64!"
    frame.loc[10] = None
    with DetectionClient(_address(triton_server, protocol), protocol=protocol) as client:
        client.wait_until_ready(timeout=30)
        result = client.predict(frame)
    errors = row_errors(result)
    assert set(errors) == {1, 2, 3, 9, 10}
    assert "truncated" in errors[1] or "corrupt" in errors[1]
    assert "row 2" in errors[2]
    assert "not an image in an accepted format" in errors[3]  # refused client-side
    assert "invalid base64" in errors[9] and "missing" in errors[10]
    assert result.loc[0].notna().all()


def _kserve_json(server, body: dict) -> tuple[int, dict]:
    """POST KServe v2 JSON with the standard library only: no tritonclient, no detstack client."""
    request = urllib.request.Request(
        f"{server.endpoints.http_url}/v2/models/{DEFAULT_MODEL_NAME}/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


@pytest.mark.parametrize("prefix", ["", "data:image/png;base64,"])
def test_a_plain_http_client_posts_the_seeds_base64_text_as_kserve_json(triton_server, prefix):
    data = _encode(_rectangles(8))
    text = prefix + base64.b64encode(data).decode("ascii")
    body = {"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES", "data": [text]}]}
    status, answer = _kserve_json(triton_server, body)
    assert status == 200, answer
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert set(outputs) == {"boxes", "scores", "labels"}
    count = outputs["scores"]["shape"][0]
    assert count > 0 and outputs["boxes"]["shape"] == [count, 4]
    with DetectionClient(triton_server.endpoints.grpc) as client:
        (expected,) = client.predict_arrays([data])
    np.testing.assert_allclose(
        np.asarray(outputs["boxes"]["data"], np.float32).reshape(-1, 4), expected.boxes, atol=1e-3
    )
    assert outputs["labels"]["data"] == [int(v) for v in expected.labels]


def test_a_request_with_neither_or_both_inputs_is_refused_with_the_reason(triton_server):
    status, answer = _kserve_json(triton_server, {"inputs": []})
    assert status == 400 and "exactly one of the inputs" in answer["error"]
    pixels = _rectangles(9)
    text = base64.b64encode(_encode(pixels)).decode("ascii")
    both = {
        "inputs": [
            {"name": "image_bytes", "shape": [1], "datatype": "BYTES", "data": [text]},
            {
                "name": "image",
                "shape": [3, 64, 64],
                "datatype": "UINT8",
                "data": pixels.transpose(2, 0, 1).reshape(-1).tolist(),
            },
        ]
    }
    status, answer = _kserve_json(triton_server, both)
    assert status == 400 and "got both" in answer["error"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_6000_by_4000_photo_is_answered(triton_server, protocol):
    # 24 megapixels: 72 MB as pixels, over HTTP's 64 MiB limit; a few MB as a JPEG file.
    y, x = np.mgrid[0:4000, 0:6000]
    pixels = np.stack([(x // 24) % 256, (y // 16) % 256, ((x + y) // 40) % 256], axis=2)
    pixels = pixels.astype(np.uint8)
    pixels[1000:2500, 1500:3500] = (220, 40, 40)
    data = _encode(pixels, "JPEG", quality=85)
    assert len(data) < 16 * 2**20
    with DetectionClient(
        _address(triton_server, protocol), protocol=protocol, timeout=120
    ) as client:
        client.wait_until_ready(timeout=30)
        result = client.predict(pd.DataFrame({"image_data": [base64.b64encode(data).decode()]}))
    assert row_errors(result) == {}
    assert result.loc[0, "boxes"] is not None
