"""Hostile clients against the real demo server: stalled clients, crash paths, the wire.

Issue 10, demo defects 4-5, and what the page sends since the wire change (issue 9). Requests
are raw bytes on sockets; the prediction function is a recorder, so no Triton is needed.
"""

from __future__ import annotations

import base64
import io
import socket
import threading
import time

import pytest
from PIL import Image

from demo import DemoConfig
from demo._endpoints import (
    parse_endpoint,
)
from tests.demo._hostile_kit import (
    assert_secured,
    exchange,
    field,
    host_of,
    image_part,
    multipart,
    request,
    serve_page,
    statuses,
)
from tests.demo.conftest import png_bytes, post_form

# ------------------------------------------------------------------ 4. stalled clients


def _closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_stalled_clients_hold_no_threads_and_are_disconnected_after_the_request_timeout(page):
    threads_before = threading.active_count()
    stalled = []
    try:
        for _ in range(100):
            sock = socket.create_connection(page.server_address, timeout=10)
            sock.sendall(f"GET / HTTP/1.1\r\nHost: {host_of(page)}\r\nX-Slow: ".encode())
            stalled.append(sock)
        time.sleep(0.3)
        assert threading.active_count() - threads_before < 5
        started = time.perf_counter()
        assert statuses(exchange(page, request(page, "GET", "/healthz", origin=None))) == [200]
        assert time.perf_counter() - started < 1.0
        # request_timeout_s is 1 s: every stalled connection is closed by the server soon after.
        assert all(_closed_by_server(sock) for sock in stalled)
    finally:
        for sock in stalled:
            sock.close()


def test_an_upload_that_stops_half_way_gets_408_after_the_request_timeout(page, recorder):
    body, headers = multipart([image_part(png_bytes())])
    started = time.perf_counter()
    data = request(page, "POST", "/api/predict", body, headers=headers)
    answer = exchange(page, data[: len(data) - len(body) // 2])
    assert statuses(answer) == [408]
    assert 0.9 < time.perf_counter() - started < 5.0
    assert recorder.calls == []


# ------------------------------------------------------------------ 5. small crash paths


@pytest.mark.parametrize("length", [b"\xb2", "²".encode(), b"1_0", b"-1", b"9" * 5000])
def test_a_content_length_that_is_not_digits_gets_a_clean_400(page, length):
    head = (
        f"POST /api/predict HTTP/1.1\r\nHost: {host_of(page)}\r\nOrigin: http://{host_of(page)}\r\n"
    )
    answer = exchange(page, head.encode() + b"Content-Length: " + length + b"\r\n\r\nxx")
    assert statuses(answer) == [400]
    assert_secured(answer)


def test_deeply_nested_multipart_and_20k_parentheses_get_an_error_never_a_500(page, recorder):
    # Each of these raised RecursionError in the email parser: a 500 and a dropped request.
    nested = b"".join(
        b"--n%d\r\nContent-Type: multipart/mixed; boundary=n%d\r\n\r\n" % (i, i + 1)
        for i in range(3000)
    )
    disposition = 'Content-Disposition: form-data; name="endpoint"'
    cases = [
        [
            b'Content-Disposition: form-data; name="image"; filename="n.bin"\r\n'
            b"Content-Type: multipart/mixed; boundary=n0\r\n\r\n" + nested
        ],
        [f"{disposition}; x={'(' * 20_000}\r\n\r\nv".encode()],
        [f"{disposition}\r\nContent-Type: text/plain; {'(' * 4000}\r\n\r\nv".encode()],
    ]
    for parts in cases:
        body, headers = multipart(parts)
        answer = exchange(page, request(page, "POST", "/api/predict", body, headers=headers))
        assert statuses(answer) in ([400], [422])
        assert_secured(answer)
    assert recorder.calls == []


@pytest.mark.parametrize("model", ["../../repository/index?x#", "a/b", "", "x y", "m" * 129])
def test_the_model_field_must_be_a_triton_model_name(page, recorder, model):
    body, headers = multipart([field("model", model.encode()), image_part(png_bytes())])
    answer = exchange(page, request(page, "POST", "/api/predict", body, headers=headers))
    if model.strip() == "":
        assert statuses(answer) == [200]  # empty: the pre-filled default model
        assert recorder.calls[-1][1] == DemoConfig().default_model
        return
    assert statuses(answer) == [400]
    assert b"model name" in answer
    assert recorder.calls == []


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (lambda page: request(page, "GET", "/nothing"), 404),
        (lambda page: request(page, "PUT", "/api/predict"), 405),
        (lambda page: request(page, "BREW", "/", b"x"), 405),
        (lambda page: request(page, "GET", "/" + "a" * 9000), 414),
        (lambda page: request(page, "GET", "/", headers={"X-Big": "b" * 17000}), 431),
        (lambda page: request(page, "GET", "/", headers={"Host": "evil.example"}), 400),
        (lambda page: b"NOT HTTP AT ALL\r\n\r\n", 400),
        (lambda page: request(page, "POST", "/api/predict", b"x" * 11_000_000), 413),
    ],
    ids=["404", "405", "unknown-method", "414", "431", "bad-host", "garbage", "413"],
)
def test_every_error_answer_carries_the_security_headers(page, raw, status):
    answer = exchange(page, raw(page))
    assert statuses(answer) == [status]
    assert_secured(answer)


def test_the_503_over_the_connection_limit_carries_the_security_headers(recorder):
    config = DemoConfig(port=0, max_connections=2, allowed_endpoints=("127.0.0.0/8",))
    for server in serve_page(config, recorder):
        with socket.create_connection(server.server_address, timeout=10):
            time.sleep(0.2)
            answer = exchange(server, request(server, "GET", "/healthz", origin=None))
        assert statuses(answer) == [503]
        assert_secured(answer)


# ------------------------------------------------------------------ the wire change


def test_the_uploaded_file_bytes_reach_the_predictor_unchanged_and_the_preview_is_oriented(
    demo_server, recorder
):
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: shown 20 wide, 40 high
    Image.new("RGB", (40, 20), (200, 10, 10)).save(buffer, format="JPEG", exif=exif)
    upload = buffer.getvalue()
    config = DemoConfig(port=0, allowed_endpoints=("127.0.0.0/8",))
    for server in serve_page(config, recorder):
        answer = post_form(server.url, {"endpoint": "grpc://127.0.0.1:8001"}, upload, "p.jpg")
    assert answer.status == 200, answer.body
    assert recorder.calls[0][3] == upload
    result = answer.json()
    assert (result["width"], result["height"]) == (20, 40)
    preview = Image.open(io.BytesIO(base64.b64decode(result["image"].split(",", 1)[1])))
    assert preview.size == (20, 40)


def test_predict_image_sends_the_encoded_bytes_when_the_client_can(monkeypatch):
    import client
    from demo._endpoints import ResolvedEndpoint
    from demo._inference import predict_image

    sent: list[tuple[bytes, str]] = []

    class EncodingClient:
        def __init__(self, *args, **kwargs) -> None:
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            pass

        def infer_encoded(self, data: bytes, where: str = "image"):
            import numpy as np

            from client._client import TimedDetections
            from client.codec import Detections

            sent.append((data, where))
            empty = Detections(
                boxes=np.zeros((0, 4), np.float32),
                scores=np.zeros(0, np.float32),
                labels=np.zeros(0, np.int64),
                names=(),
                model_version="3",
            )
            return TimedDetections(empty, 0.01, 1)

    monkeypatch.setattr(client, "DetectionClient", EncodingClient)
    resolved = ResolvedEndpoint(parse_endpoint("grpc://127.0.0.1:8001"), "127.0.0.1:8001")
    outcome = predict_image(resolved, "m", None, b"file bytes", 5.0)
    assert sent == [(b"file bytes", "uploaded image")]
    assert outcome.model_version == "3" and outcome.detections == ()
