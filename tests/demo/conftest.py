"""Fixtures of the demo page tests: a running demo server and a multipart encoder."""

from __future__ import annotations

import contextlib
import io
import json
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message

import pytest
from PIL import Image

from demo import DemoConfig, create_app


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Message  # case-insensitive, as HTTP header names are
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


def post_form(
    url: str,
    fields: dict[str, str],
    image: bytes | None,
    filename: str = "x.png",
    headers: dict[str, str] | None = None,
) -> Answer:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(
            f"--{boundary}\r\nContent-Disposition: form-data; "
            f'name="{name}"\r\n\r\n{value}\r\n'.encode()
        )
    if image is not None:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
            + image
            + b"\r\n"
        )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        url + "api/predict",
        data=body,
        method="POST",
        # What a browser sends from the page itself: the page's own origin.
        headers={
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Origin": url.rstrip("/"),
            **(headers or {}),
        },
    )
    return _open(request)


def get(url: str) -> Answer:
    return _open(urllib.request.Request(url))


def _open(request: urllib.request.Request) -> Answer:
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return Answer(response.status, response.headers, response.read())
    except urllib.error.HTTPError as error:
        return Answer(error.code, error.headers, error.read())


def png_bytes(size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (120, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def demo_server():
    """A demo page on a free loopback port (all of loopback allowed, 1 MB uploads)."""
    server = create_app(
        DemoConfig(port=0, max_upload_mb=1.0, timeout_s=10.0, allowed_endpoints=("127.0.0.0/8",))
    )
    with serving(server):
        yield server


@contextlib.contextmanager
def serving(server) -> Iterator:
    """Run a demo server (``create_app``'s) in a thread until the block ends."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def recorder():
    """A prediction function that records what the page sends it (hostile-client tests)."""
    from tests.demo._hostile_kit import Recorder

    return Recorder()


@pytest.fixture
def page(recorder) -> Iterator:
    """A demo page (10 MB uploads, 1 s to send a request) whose predictions are recorded."""
    from tests.demo._hostile_kit import serve_page

    config = DemoConfig(
        port=0,
        allowed_endpoints=("127.0.0.0/8",),
        request_timeout_s=1.0,
        max_connections=500,
    )
    yield from serve_page(config, recorder)
