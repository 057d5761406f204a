"""A soak of the served model and the demo page under a hostile mix (issue 10, load and faults).

For :data:`SOAK_SECONDS`, several threads at once send, against the session's Triton (the
exported tiny model) and a demo page pointed at it:

* DetectionClient frames (gRPC and HTTP) mixing good images with every bad kind of
  :mod:`tests.soak._inputs`, files over the client's request limit included;
* demo page uploads (``POST /api/predict``) of the same kinds, and files over its upload limit;
* slow peers on raw sockets: a request dribbled slower than the page's deadline, a connection
  that sends nothing, a POST that declares a 10 GB body; idle connections held open on Triton's
  ports all along.

Then: nothing crashed (Triton, its python-backend stubs and the page still answer their health
checks, the stubs are the same processes), every good request got the detections of the
reference computed before the load, every bad one its reason (a row error or a 4xx), and memory
stayed within the bounds below. The figures are printed and written to ``soak-figures.json``
in the test's ``tmp_path`` (pytest shows the print of a passing test with ``-rP``).
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from client import DetectionClient
from demo import DemoConfig, create_app
from tests.demo.conftest import get, post_form, serving
from tests.soak._inputs import (
    BAD_KINDS,
    CLIENT_REQUEST_LIMIT,
    DEMO_UPLOAD_MB,
    GOOD_KINDS,
    build_inputs,
)
from tests.soak._load import (
    DEMO_REQUEST_TIMEOUT_S,
    Tally,
    client_load,
    client_reference,
    demo_detections,
    demo_fields,
    demo_load,
    run_threads,
    same_detections,
    slow_load,
)
from tests.soak._memory import MemorySampler, descendants
from tests.soak._slow import form_request

pytestmark = [pytest.mark.slow, pytest.mark.triton, pytest.mark.soak]

#: How long the load runs (issue 10 asks for at least 60 s; CI runs exactly this).
SOAK_SECONDS = 60.0
#: Growth of the Triton process tree (tritonserver + one python-backend stub per model
#: instance; the tiny model has 2) from the first sample of the soak to its peak. The costliest
#: valid request is the 12 MP PNG: decoded RGB (3 B/pixel), its CHW copy (3), then inside the
#: ONNX graph the float32 image (12) and its normalised copy (12) before the resize: ~30 B a
#: pixel, ~360 MB, and onnxruntime's arena keeps that once it has grown. Both instances may do
#: it at once: 720 MB, plus ~180 MB of allocator slack and queued requests. A decoded bomb
#: (10^10 pixels claimed) would be far over it.
TRITON_GROWTH_BOUND_MB = 900.0
#: Growth of this test process (the demo page in a thread, the clients, the inputs) over the
#: soak. The page decodes previews of up to 12 MP (36 MB RGB, plus the JPEG it sends back) on
#: 2 workers and holds at most 4 uploads per worker (1 MB each); the clients hold their
#: frames (~2 MB): 250 MB bounds a few of those at once plus allocator slack.
TEST_PROCESS_GROWTH_BOUND_MB = 250.0
#: Leak check: the peak of the soak's last third may exceed the peak of its first third by at
#: most this (every kind has been sent many times by the end of the first third, so the
#: arenas have grown; a leak of 100 kB per request over the ~1000 of a minute would show).
LEAK_BOUND_MB = 100.0
#: Idle connections held open on each of Triton's HTTP and gRPC ports for the whole soak.
IDLE_TRITON_CONNECTIONS = 4


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def soak_page(triton_server) -> Iterator:
    """A demo page that may call the session Triton's gRPC and HTTP ports (1 MB uploads)."""
    endpoints = triton_server.endpoints
    config = DemoConfig(
        port=0,
        max_upload_mb=DEMO_UPLOAD_MB,
        timeout_s=30.0,
        default_endpoint=f"grpc://{endpoints.grpc}",
        allowed_endpoints=(endpoints.grpc, endpoints.http),
        request_timeout_s=DEMO_REQUEST_TIMEOUT_S,
        max_connections=64,
        workers=2,
    )
    server = create_app(config)
    with serving(server):
        yield server


def _idle_connections(addresses: list[tuple[str, int]], count: int) -> list[socket.socket]:
    return [
        socket.create_connection(address, timeout=5) for address in addresses for _ in range(count)
    ]


def _triton_ready(server) -> bool:
    try:
        with urllib.request.urlopen(
            f"{server.endpoints.http_url}/v2/health/ready", timeout=10
        ) as r:
            return r.status == 200
    except OSError:
        return False


# --------------------------------------------------------------------------- the test


def test_a_minute_of_hostile_load_crashes_nothing_answers_every_good_request_and_bounds_memory(
    triton_server, soak_page, tmp_path: Path
):
    inputs = build_inputs()
    endpoints = triton_server.endpoints
    page_host, page_port = soak_page.server_address
    demo_endpoints = (f"grpc://{endpoints.grpc}", f"http://{endpoints.http}")
    common = {"max_request_bytes": CLIENT_REQUEST_LIMIT, "retries": 2, "backoff": 0.1}
    with (
        DetectionClient(endpoints.grpc, protocol="grpc", concurrency=2, **common) as grpc_client,
        DetectionClient(endpoints.http, protocol="http", concurrency=2, **common) as http_client,
    ):
        grpc_client.wait_until_ready(timeout=60)
        # Reference answers, once, before any load; the warm-up sends every kind once more.
        reference = client_reference(grpc_client, inputs)
        assert len(reference["good_png"]["scores"]) and len(reference["good_jpeg"]["scores"]), (
            "the tiny model must find the rectangles, or 'answered correctly' checks nothing"
        )
        http_reference = client_reference(http_client, inputs)
        for kind in GOOD_KINDS:
            assert same_detections(http_reference[kind], reference[kind]), kind
        demo_reference = {}
        for kind, item in inputs.items():
            if item.demo_status == 200:
                answer = post_form(soak_page.url, demo_fields(demo_endpoints[0]), item.data)
                assert answer.status == 200, (kind, answer.body[:300])
                demo_reference[kind] = demo_detections(answer)
        warm = Tally()
        client_load(grpc_client, "warmup", inputs, reference, warm, time.monotonic() + 0.1, 0)
        assert not warm.problems, warm.problems
        stubs = descendants(triton_server.pid)

        tally = Tally()
        idle = _idle_connections(
            [("127.0.0.1", endpoints.http_port), ("127.0.0.1", endpoints.grpc_port)],
            IDLE_TRITON_CONNECTIONS,
        )
        started = time.monotonic()
        deadline = started + SOAK_SECONDS
        slow_request = form_request(
            page_host, page_port, inputs["good_png"].data, demo_fields(demo_endpoints[0])
        )
        try:
            with MemorySampler(
                {"triton_tree": triton_server.pid, "test_process": os.getpid()}
            ) as memory:
                run_threads(
                    [
                        (
                            "grpc",
                            lambda: client_load(
                                grpc_client, "grpc", inputs, reference, tally, deadline, 1
                            ),
                        ),
                        (
                            "http",
                            lambda: client_load(
                                http_client, "http", inputs, reference, tally, deadline, 2
                            ),
                        ),
                        (
                            "demo",
                            lambda: demo_load(
                                soak_page.url,
                                demo_endpoints,
                                inputs,
                                demo_reference,
                                tally,
                                deadline,
                            ),
                        ),
                        (
                            "slow",
                            lambda: slow_load(page_host, page_port, slow_request, tally, deadline),
                        ),
                    ],
                    deadline,
                )
        finally:
            for sock in idle:
                sock.close()
        elapsed = time.monotonic() - started

        # Nothing crashed: the same processes answer their health checks and a good request.
        alive = triton_server.is_alive() and _triton_ready(triton_server)
        grpc_client.wait_until_ready(timeout=30)
        (after,) = grpc_client.predict_arrays([inputs["good_png"].data])
    stubs_after = descendants(triton_server.pid)
    page_health = get(soak_page.url + "healthz")

    third = SOAK_SECONDS / 3
    figures = {
        "soak_seconds": round(elapsed, 1),
        "requests": dict(tally.requests),
        "requests_total": sum(tally.requests.values()),
        "good_answered_by_kind": dict(sorted(tally.answered.items())),
        "bad_refused_by_kind": dict(sorted(tally.refused.items())),
        "demo_statuses": dict(sorted(tally.statuses.items())),
        "slow_peers_cut_off": dict(tally.slow),
        "slow_peers_longest_hold_s": tally.slow_held_s,
        "memory_mb": {
            name: {
                "after_warmup": round(memory.first_mb[name], 1),
                "peak": round(memory.peak_mb[name], 1),
                "last": round(memory.last_mb[name], 1),
                "growth_to_peak": round(memory.peak_mb[name] - memory.first_mb[name], 1),
            }
            for name in memory.peak_mb
        },
        "memory_bounds_mb": {
            "triton_tree_growth": TRITON_GROWTH_BOUND_MB,
            "test_process_growth": TEST_PROCESS_GROWTH_BOUND_MB,
            "leak_first_to_last_third": LEAK_BOUND_MB,
        },
        "memory_samples": memory.samples,
        "leak_check_mb": {
            name: round(
                memory.peak_between(name, deadline - third, deadline)
                - memory.peak_between(name, started, started + third),
                1,
            )
            for name in memory.peak_mb
        },
        "triton_children": {"before": sorted(stubs), "after": sorted(stubs_after)},
        "problems": len(tally.problems),
    }
    (tmp_path / "soak-figures.json").write_text(json.dumps(figures, indent=2), encoding="utf-8")
    print("soak figures:", json.dumps(figures, indent=2))

    assert not tally.problems, f"{len(tally.problems)} problems:\n" + "\n".join(tally.problems[:30])
    assert elapsed >= SOAK_SECONDS
    assert alive, "tritonserver died or stopped answering its readiness check"
    assert stubs and stubs_after == stubs, "a python-backend stub crashed and was restarted"
    assert page_health.status == 200
    assert same_detections(
        {"boxes": after.boxes, "labels": after.labels, "scores": after.scores},
        reference["good_png"],
    )
    # Every kind was exercised on every channel, and the slow peers all came.
    for channel in ("grpc", "http"):
        for kind in GOOD_KINDS:
            assert tally.answered[f"{channel}:{kind}"], f"{channel}: no {kind} answered"
        for kind in BAD_KINDS:
            assert tally.refused[f"{channel}:{kind}"], f"{channel}: no {kind} refused"
    for kind, item in inputs.items():
        key = f"demo:{kind}"
        assert (tally.answered if item.demo_status == 200 else tally.refused)[key], key
    assert {key.split(":")[0] for key in tally.slow} == {"dribble", "silent", "declared_huge"}
    growth = figures["memory_mb"]
    assert growth["triton_tree"]["growth_to_peak"] < TRITON_GROWTH_BOUND_MB, growth
    assert growth["test_process"]["growth_to_peak"] < TEST_PROCESS_GROWTH_BOUND_MB, growth
    for name, leak in figures["leak_check_mb"].items():
        assert leak < LEAK_BOUND_MB, f"{name} grew {leak} MB from the first to the last third"
