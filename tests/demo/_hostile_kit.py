"""Raw-socket tools for the hostile-client tests: a recording predictor, a page, raw requests."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator

from demo import DemoConfig, create_app
from demo._inference import Outcome
from tests.demo.conftest import serving

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


def serve_page(config: DemoConfig, predictor) -> Iterator:
    """A demo page with ``predictor`` in place of Triton, running until the generator ends."""
    server = create_app(config, predictor)
    with serving(server):
        yield server


def host_of(server) -> str:
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
    host = host_of(server)
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
