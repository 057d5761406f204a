"""The demo page's server without Triton: page, limits, allow-list and error answers.

The path through a real Triton (boxes drawn, token refused) is in test_browser.py.
"""

from __future__ import annotations

import io
import socket

import numpy as np
import pytest
from PIL import Image

from tests.demo.conftest import get, png_bytes, post_form
from tests.fixtures.models import tiny_shape_image
from tests.fixtures.triton import TRITON_TEST_TOKEN


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_page_has_the_four_fields_and_never_lets_the_browser_keep_the_token(demo_server):
    answer = get(demo_server.url)
    page = answer.body.decode()
    assert answer.status == 200
    for field in ('id="endpoint"', 'id="token"', 'id="image"', 'id="threshold"'):
        assert field in page
    assert 'type="password" autocomplete="new-password"' in page
    assert 'autocomplete="off"' in page
    assert "Set-Cookie" not in answer.headers
    assert answer.headers["Cache-Control"] == "no-store"
    assert "script-src 'self'" in answer.headers["Content-Security-Policy"]
    script = get(demo_server.url + "static/demo.js").body.decode()
    assert "localStorage" not in script and "sessionStorage" not in script
    assert "document.cookie" not in script and "innerHTML" not in script


def test_upload_over_the_limit_is_refused_with_413_before_it_is_read(demo_server):
    answer = post_form(demo_server.url, {"endpoint": "grpc://127.0.0.1:1"}, b"x" * 1_300_000)
    assert answer.status == 413
    assert answer.json()["error"]["kind"] == "too_large"
    assert "1.0 MB" in answer.json()["error"]["message"]


def test_endpoint_outside_the_allow_list_is_refused_so_the_page_is_no_open_proxy(demo_server):
    answer = post_form(demo_server.url, {"endpoint": "http://10.1.2.3:8000"}, png_bytes())
    assert answer.status == 403
    assert answer.json()["error"]["kind"] == "endpoint_not_allowed"


def test_an_image_that_cannot_be_decoded_gets_its_own_error_naming_the_file(demo_server):
    answer = post_form(
        demo_server.url,
        {"endpoint": f"grpc://127.0.0.1:{_closed_port()}"},
        b"this is not an image",
        filename="notes.txt",
    )
    assert answer.status == 422
    error = answer.json()["error"]
    assert error["kind"] == "bad_image"
    assert "notes.txt" in error["message"]


def test_an_unreachable_endpoint_gets_its_own_error(demo_server):
    answer = post_form(
        demo_server.url,
        {"endpoint": f"grpc://127.0.0.1:{_closed_port()}", "token": "a-token-of-16-chars-or-more"},
        png_bytes(),
    )
    assert answer.status == 502
    error = answer.json()["error"]
    assert error["kind"] == "unreachable"
    assert "a-token-of-16-chars-or-more" not in answer.body.decode()


def test_cross_site_posts_are_refused(demo_server):
    answer = post_form(
        demo_server.url,
        {"endpoint": "grpc://127.0.0.1:8001"},
        png_bytes(),
        headers={"Origin": "http://evil.example"},
    )
    assert answer.status == 403
    assert answer.json()["error"]["kind"] == "cross_origin"


def test_bad_threshold_and_bad_endpoint_are_named_in_the_answer(demo_server):
    answer = post_form(
        demo_server.url, {"endpoint": "grpc://127.0.0.1:8001", "threshold": "lots"}, png_bytes()
    )
    assert answer.status == 400
    assert "'lots'" in answer.json()["error"]["message"]
    answer = post_form(demo_server.url, {"endpoint": "ftp://127.0.0.1"}, png_bytes())
    assert answer.status == 400
    assert "ftp" in answer.json()["error"]["message"]


@pytest.mark.triton
@pytest.mark.slow
def test_prediction_over_http_returns_detections_version_and_latency(
    demo_server, triton_server_with_token
):
    image, _, expected_ids = tiny_shape_image(np.random.default_rng(5), max_shapes=1)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    endpoint = f"http://{triton_server_with_token.endpoints.http}/v2/models/my-detection-model"
    answer = post_form(
        demo_server.url,
        {"endpoint": endpoint, "token": TRITON_TEST_TOKEN, "threshold": "0.5"},
        buffer.getvalue(),
    )
    assert answer.status == 200, answer.body
    result = answer.json()
    assert result["protocol"] == "http" and result["model_version"] == "1"
    assert (result["width"], result["height"]) == (image.shape[1], image.shape[0])
    assert result["image"].startswith("data:image/png;base64,")
    assert {d["label"] for d in result["detections"]} & set(expected_ids.tolist())
    assert all(d["score"] >= 0.5 for d in result["detections"])
    assert result["latency_ms"]["total"] >= result["latency_ms"]["triton"] > 0
