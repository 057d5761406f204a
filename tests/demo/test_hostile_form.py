"""Hostile clients against the real demo server: the form parser and cross-site checks.

Issue 10, demo defects 1-3. Each test names the defect it pins down; each failed on the old
``http.server`` + ``email`` stack. Requests are raw bytes on sockets where an ordinary client
would refuse to send them. The prediction function is a recorder, so these tests need no
Triton (except the one that points the page at a service that is not Triton).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from demo import DEFAULT_ALLOWED_ENDPOINTS, DemoConfig
from demo._endpoints import (
    EndpointNotAllowedError,
    check_endpoint,
    parse_allow_list,
    parse_endpoint,
)
from tests.demo._hostile_kit import (
    exchange,
    field,
    host_of,
    image_part,
    multipart,
    request,
    statuses,
)
from tests.demo.conftest import png_bytes, post_form

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
    host = host_of(page)
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
