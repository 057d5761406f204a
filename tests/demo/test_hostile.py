"""Hostile clients against the real demo server on loopback (issue 10, demo defects 1-5).

Each test names the defect it pins down; each failed on the old ``http.server`` + ``email``
stack. Requests are raw bytes on sockets where an ordinary client would refuse to send them.
The prediction function is a recorder, so these tests need no Triton (except the one that
points the page at a service that is not Triton).
"""

from __future__ import annotations

import base64
import io
import re
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from demo import DEFAULT_ALLOWED_ENDPOINTS, DemoConfig, create_app
from demo._endpoints import (
    EndpointNotAllowedError,
    check_endpoint,
    parse_allow_list,
    parse_endpoint,
)
from demo._inference import Outcome
from tests.demo.conftest import png_bytes, post_form, serving

SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
    "referrer-policy": "no-referrer",
}


class Recorder:
    """A prediction function that records what it was given and finds nothing."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str | None, bytes]] = []

    def __call__(self, resolved, model, token, data, timeout_s) -> Outcome:
        self.calls.append((resolved.address, model, token, data))
        return Outcome(detections=(), model_version="1", triton_ms=1.0)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def _serve(config: DemoConfig, predictor) -> Iterator:
    server = create_app(config, predictor)
    with serving(server):
        yield server


@pytest.fixture
def page(recorder) -> Iterator:
    """A demo page (10 MB uploads, 1 s to send a request) whose predictions are recorded."""
    config = DemoConfig(
        port=0,
        allowed_endpoints=("127.0.0.0/8",),
        request_timeout_s=1.0,
        max_connections=500,
    )
    yield from _serve(config, recorder)


def _host(server) -> str:
    host, port = server.server_address
    return f"{host}:{port}"


def exchange(server, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes, read until the server closes the connection (or ``timeout``)."""
    with socket.create_connection(server.server_address, timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            received += chunk
        return received


def statuses(data: bytes) -> list[int]:
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]


def head_of(data: bytes) -> dict[str, str]:
    """The header fields of the first answer, lowercase names."""
    lines = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return {
        name.strip().lower(): value.strip() for name, _, value in (x.partition(":") for x in lines)
    }


def request(
    server,
    method: str,
    path: str,
    body: bytes = b"",
    *,
    headers: dict[str, str] | None = None,
    origin: str | None = "self",
    close: bool = True,
) -> bytes:
    """A request as raw bytes: this page's Host and (by default) Origin."""
    host = _host(server)
    fields = {"Host": host}
    if origin is not None:
        fields["Origin"] = f"http://{host}" if origin == "self" else origin
    if method == "POST" or body:
        fields["Content-Length"] = str(len(body))
    if close:
        fields["Connection"] = "close"
    fields.update(headers or {})
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    return head.encode("latin-1") + b"\r\n" + body


def multipart(parts: list[bytes], boundary: bytes = b"B0undary") -> tuple[bytes, dict[str, str]]:
    body = b"".join(b"--" + boundary + b"\r\n" + part + b"\r\n" for part in parts)
    body += b"--" + boundary + b"--\r\n"
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary.decode()}"}


def field(name: str, value: bytes) -> bytes:
    return f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value


def image_part(data: bytes, filename: str = "x.png") -> bytes:
    return (
        f'Content-Disposition: form-data; name="image"; filename="{filename}"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode() + data


def assert_secured(data: bytes) -> None:
    head = head_of(data)
    for name, value in SECURITY_HEADERS.items():
        assert head.get(name) == value, (name, head)
    assert "frame-ancestors 'none'" in head["content-security-policy"]
    assert b"Traceback" not in data


# ------------------------------------------------------------------ 1. the form parser


@pytest.mark.parametrize(
    "hostile_part",
    [
        # 280 kB of RFC 2047 encoded words in the file name (7.5 s and 2 GB before)
        (
            'Content-Disposition: form-data; name="image"; filename="'
            + "=?utf-8?q?a?= " * 20_000
            + '"\r\n\r\nxx'
        ).encode(),
        # a long '; p=v' parameter list
        (
            'Content-Disposition: form-data; name="endpoint"' + "; p=v" * 50_000 + "\r\n\r\nv"
        ).encode(),
    ],
    ids=["rfc2047-filename", "parameter-list"],
)
def test_a_huge_part_header_is_refused_at_once_without_parsing_it(page, recorder, hostile_part):
    body, headers = multipart([hostile_part])
    started = time.perf_counter()
    answer = exchange(page, request(page, "POST", "/api/predict", body, headers=headers))
    assert statuses(answer) == [400]
    assert time.perf_counter() - started < 2.0
    assert b"header" in answer.lower()
    assert recorder.calls == []


def test_a_hundred_thousand_tiny_parts_are_refused_after_the_first_few(page, recorder):
    # 87 s before; the page sends each of its five fields once, so the second one stops it.
    body, headers = multipart([field("threshold", b"x")] * 100_000)
    assert len(body) < DemoConfig().max_upload_bytes
    started = time.perf_counter()
    answer = exchange(page, request(page, "POST", "/api/predict", body, headers=headers))
    assert statuses(answer) == [400]
    assert b"appears twice" in answer
    assert time.perf_counter() - started < 3.0
    assert recorder.calls == []


def test_unknown_repeated_or_oversized_fields_are_refused(page, recorder):
    for parts, fragment in [
        ([field("debug", b"1")], b"unexpected form field 'debug'"),
        ([field("model", b"a"), field("model", b"b")], b"appears twice"),
        ([field("token", b"t" * 20_000)], b"longer than 16384 bytes"),
        ([field("endpoint", b"\xff\xfe")], b"not UTF-8"),
    ]:
        body, headers = multipart(parts)
        answer = exchange(page, request(page, "POST", "/api/predict", body, headers=headers))
        assert statuses(answer) == [400], fragment
        assert fragment in answer
    assert recorder.calls == []


# ------------------------------------------------------------------ 2. cross-site checks


@pytest.mark.parametrize("origin", ["null", None], ids=["null", "missing"])
def test_a_post_with_a_null_or_missing_origin_is_refused(page, recorder, origin):
    body, headers = multipart([image_part(png_bytes())])
    answer = exchange(
        page, request(page, "POST", "/api/predict", body, headers=headers, origin=origin)
    )
    assert statuses(answer) == [403]
    assert b'"cross_origin"' in answer
    assert recorder.calls == []


def test_a_dns_rebinding_page_with_matching_host_and_origin_gets_no_answer(page, recorder):
    port = page.server_address[1]
    rebound = f"rebind.attacker.example:{port}"
    headers = {"Host": rebound, "Origin": f"http://{rebound}"}
    answer = exchange(page, request(page, "GET", "/api/config", headers=headers))
    assert statuses(answer) == [400]
    assert b'"bad_host"' in answer and b"default_endpoint" not in answer
    body, form_headers = multipart([image_part(png_bytes())])
    answer = exchange(
        page, request(page, "POST", "/api/predict", body, headers={**headers, **form_headers})
    )
    assert statuses(answer) == [400]
    assert recorder.calls == []


@pytest.mark.parametrize("name", ["localhost", "localhost.", "127.0.0.1"])
def test_the_page_answers_to_its_own_loopback_names(page, name):
    port = page.server_address[1]
    answer = exchange(page, request(page, "GET", "/healthz", headers={"Host": f"{name}:{port}"}))
    assert statuses(answer) == [200]


@pytest.mark.parametrize(
    ("path", "origin", "status"),
    [("/nothing", "self", 404), ("/api/predict", "http://evil.example", 403)],
    ids=["after-404", "after-403"],
)
def test_the_body_of_an_early_refusal_is_never_read_as_a_second_request(page, path, origin, status):
    host = _host(page)
    smuggled = f"GET /api/config HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    first = request(page, "POST", path, smuggled, origin=origin, close=False)
    last = request(page, "GET", "/healthz", origin=None)
    answer = exchange(page, first + last)
    # One answer to the refused request, one to the real second request: the body was a body.
    assert statuses(answer) == [status, 200]
    assert b"default_endpoint" not in answer
    assert answer.endswith(b"ok\n")


class _NotTriton(BaseHTTPRequestHandler):
    """Some other local service: answers everything with its own HTML page."""

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b"<html><h1>admin console</h1><p>SECRET-7f3a9</p></html>"
        self.send_response(int(self.path.rsplit("/", 1)[-1]) if self.path[-3:].isdigit() else 500)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer  # noqa: N815

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def not_triton() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotTriton)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_what_a_non_triton_service_answers_is_summarised_never_passed_back(
    demo_server, not_triton, protocol
):
    answer = post_form(demo_server.url, {"endpoint": f"{protocol}://{not_triton}"}, png_bytes())
    assert answer.status in (404, 422, 502), answer.body
    assert b"SECRET-7f3a9" not in answer.body and b"admin console" not in answer.body
    assert not_triton in answer.json()["error"]["message"]


def test_the_default_allow_list_names_tritons_ports_not_all_of_loopback():
    rules = parse_allow_list(DEFAULT_ALLOWED_ENDPOINTS)
    for allowed in ("grpc://127.0.0.1:8001", "http://127.0.0.1:8000", "http://[::1]:8000"):
        check_endpoint(parse_endpoint(allowed), rules)
    for other in ("http://127.0.0.1:22", "http://127.0.0.1:6379", "http://localhost:5432"):
        with pytest.raises(EndpointNotAllowedError):
            check_endpoint(parse_endpoint(other), rules)
    # Where Triton was started on other ports, the pre-filled endpoint is allowed as well.
    config = DemoConfig(default_endpoint="grpc://127.0.0.1:18001")
    check_endpoint(
        parse_endpoint("grpc://127.0.0.1:18001"), parse_allow_list(config.endpoint_allow_list)
    )


# ------------------------------------------------------------------ 3. localhost.


def test_localhost_with_a_trailing_dot_is_normalised_and_never_sent_to_dns(monkeypatch):
    default = parse_allow_list(DEFAULT_ALLOWED_ENDPOINTS)
    assert check_endpoint(parse_endpoint("grpc://localhost.:8001"), default).address == (
        "localhost:8001"
    )
    with pytest.raises(EndpointNotAllowedError):
        check_endpoint(parse_endpoint("http://LOCALHOST.:22"), default)
    looked_up: list[str] = []
    real = socket.getaddrinfo

    def recording(host, *args, **kwargs):
        looked_up.append(host)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", recording)
    resolved = check_endpoint(
        parse_endpoint("http://localhost.:8000"), parse_allow_list(["127.0.0.0/8", "::1"])
    )
    assert looked_up == ["localhost"]
    assert resolved.address in ("127.0.0.1:8000", "[::1]:8000")


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
            sock.sendall(f"GET / HTTP/1.1\r\nHost: {_host(page)}\r\nX-Slow: ".encode())
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
    head = f"POST /api/predict HTTP/1.1\r\nHost: {_host(page)}\r\nOrigin: http://{_host(page)}\r\n"
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
    for server in _serve(config, recorder):
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
    for server in _serve(config, recorder):
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
