"""Slow and silent clients on raw sockets: what a stalled or malicious peer does to a server.

* :func:`dribble` sends a request a few bytes at a time, slower than any request deadline;
* :func:`silent` connects and sends nothing;
* :func:`declared_huge` sends only the headers of a POST that claims a 10 GB body.

Each returns a :class:`SlowOutcome`: how long the server let the connection live and the first
bytes it answered, so a test can check the server closed it within its deadline.

Example:
    >>> outcome = silent("127.0.0.1", 8080, give_up_s=10)   # doctest: +SKIP
    >>> outcome.closed_by_server, outcome.held_s             # doctest: +SKIP
    (True, 3.0)
"""

from __future__ import annotations

import select
import socket
import time
import uuid
from dataclasses import dataclass

__all__ = ["SlowOutcome", "declared_huge", "dribble", "form_request", "silent"]


@dataclass(frozen=True)
class SlowOutcome:
    """What the server did with a slow connection.

    Attributes:
        closed_by_server: the server closed it (or reset it) before we gave up.
        held_s: seconds from connecting until it was closed (or we gave up).
        answer: the first bytes the server answered (``b""``: closed without an answer).
        sent: bytes of the request we managed to send.
    """

    closed_by_server: bool
    held_s: float
    answer: bytes
    sent: int

    @property
    def status(self) -> int | None:
        """The HTTP status of the answer, if there was one."""
        parts = self.answer.split(b" ", 2)
        if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
            return int(parts[1])
        return None


def form_request(host: str, port: int, image: bytes, fields: dict[str, str]) -> bytes:
    """The bytes of the demo page's ``POST /api/predict``, as the page itself sends it."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="slow.png"\r\n'
        "Content-Type: image/png\r\n\r\n".encode()
        + image
        + b"\r\n"
    )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    head = (
        f"POST /api/predict HTTP/1.1\r\nHost: {host}:{port}\r\nOrigin: http://{host}:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


def _read_answer(sock: socket.socket, wait_s: float) -> tuple[bool, bytes]:
    """``(closed, first bytes)`` after waiting up to ``wait_s`` for the server to speak."""
    ready, _, _ = select.select([sock], [], [], wait_s)
    if not ready:
        return False, b""
    try:
        data = sock.recv(4096)
    except (ConnectionResetError, BrokenPipeError):
        return True, b""
    if not data:
        return True, b""
    # An answer: the server closes after it (a slow request is never kept alive).
    sock.settimeout(2.0)
    try:
        while True:
            more = sock.recv(4096)
            if not more:
                break
            data += more
    except (TimeoutError, OSError):
        pass
    return True, data


def dribble(
    host: str, port: int, request: bytes, *, chunk: int, interval_s: float, give_up_s: float
) -> SlowOutcome:
    """Send ``request`` ``chunk`` bytes every ``interval_s`` until the server closes it."""
    started = time.monotonic()
    sent = 0
    with socket.create_connection((host, port), timeout=5) as sock:
        while time.monotonic() - started < give_up_s:
            if sent < len(request):
                try:
                    sock.sendall(request[sent : sent + chunk])
                except (BrokenPipeError, ConnectionResetError):
                    return SlowOutcome(True, time.monotonic() - started, b"", sent)
                sent += min(chunk, len(request) - sent)
            closed, answer = _read_answer(sock, interval_s)
            if closed:
                return SlowOutcome(True, time.monotonic() - started, answer, sent)
        return SlowOutcome(False, time.monotonic() - started, b"", sent)


def silent(host: str, port: int, *, give_up_s: float) -> SlowOutcome:
    """Connect and send nothing; wait for the server to close the connection."""
    started = time.monotonic()
    with socket.create_connection((host, port), timeout=5) as sock:
        closed, answer = _read_answer(sock, give_up_s)
        return SlowOutcome(closed, time.monotonic() - started, answer, 0)


def declared_huge(host: str, port: int, *, give_up_s: float) -> SlowOutcome:
    """POST headers claiming a 10 GB multipart body, then nothing: the page must refuse it."""
    head = (
        f"POST /api/predict HTTP/1.1\r\nHost: {host}:{port}\r\nOrigin: http://{host}:{port}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {10 * 2**30}\r\n\r\n"
    ).encode()
    started = time.monotonic()
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(head)
        closed, answer = _read_answer(sock, give_up_s)
        return SlowOutcome(closed, time.monotonic() - started, answer, len(head))
