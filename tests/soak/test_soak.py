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

import base64
import json
import os
import re
import socket
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from client import DetectionClient, revert_predict_to_array, row_errors
from client.codec import IMAGE_COLUMN
from demo import DemoConfig, create_app
from tests.demo.conftest import get, post_form, serving
from tests.soak._inputs import (
    BAD_KINDS,
    CLIENT_REQUEST_LIMIT,
    DEMO_UPLOAD_MB,
    GOOD_KINDS,
    Input,
    build_inputs,
)
from tests.soak._memory import MemorySampler, descendants
from tests.soak._slow import declared_huge, dribble, form_request, silent

pytestmark = [pytest.mark.slow, pytest.mark.triton, pytest.mark.soak]

#: How long the load runs (issue 10 asks for at least 60 s; CI runs exactly this).
SOAK_SECONDS = 60.0
#: The demo page's deadline for a whole request: slow peers must be cut off after it.
DEMO_REQUEST_TIMEOUT_S = 3.0
#: Slack on top of that deadline for a loaded 2-core machine (event loop, scheduling).
CLOSE_SLACK_S = 3.0
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
#: Rows per client frame, and how many frames carry the costly 12 MP image (one in N).
ROWS_PER_FRAME = 6
HUGE_EVERY = 6
#: Box tolerance against the reference (the same bytes through the same model: float noise).
BOX_ATOL = 1e-3


@dataclass
class Tally:
    """What the load threads did (shared, updated under its lock)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: Counter = field(default_factory=Counter)  # by channel
    answered: Counter = field(default_factory=Counter)  # good kinds answered correctly
    refused: Counter = field(default_factory=Counter)  # bad kinds refused with their reason
    statuses: Counter = field(default_factory=Counter)  # demo page answers by status
    slow: Counter = field(default_factory=Counter)  # slow peers cut off, by kind
    slow_held_s: dict[str, float] = field(default_factory=dict)  # longest hold, by kind
    problems: list[str] = field(default_factory=list)

    def count(self, counter: Counter, key: str, amount: int = 1) -> None:
        with self.lock:
            counter[key] += amount

    def problem(self, text: str) -> None:
        with self.lock:
            self.problems.append(text)


def _cell(item: Input) -> str:
    return item.cell if item.cell is not None else base64.b64encode(item.data).decode("ascii")


def _same_detections(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> bool:
    if got["boxes"].shape != want["boxes"].shape:
        return False
    return bool(
        np.allclose(got["boxes"], want["boxes"], atol=BOX_ATOL)
        and np.array_equal(got["labels"], want["labels"])
        and np.allclose(got["scores"], want["scores"], atol=1e-4)
    )


def _client_reference(client: DetectionClient, inputs: dict[str, Input]) -> dict[str, dict]:
    """Each good kind's detections, computed once before the load."""
    kinds = list(GOOD_KINDS)
    frame = pd.DataFrame({IMAGE_COLUMN: [_cell(inputs[k]) for k in kinds]}, index=kinds)
    result = client.predict(frame)
    assert row_errors(result) == {}, row_errors(result)
    arrays = revert_predict_to_array(result)
    return {kind: dict(arrays.loc[kind]) for kind in kinds}


def _demo_fields(endpoint: str) -> dict[str, str]:
    return {"endpoint": endpoint, "threshold": "0.5"}


def _demo_detections(answer) -> list[tuple]:
    return [
        (tuple(d["box"]), d["score"], d["label"], d["name"]) for d in answer.json()["detections"]
    ]


def _close(got: list[tuple], want: list[tuple]) -> bool:
    if len(got) != len(want):
        return False
    return all(
        np.allclose(g[0], w[0], atol=0.02) and abs(g[1] - w[1]) < 2e-4 and g[2:] == w[2:]
        for g, w in zip(got, want, strict=True)
    )


# --------------------------------------------------------------------------- the load


def _client_load(
    client: DetectionClient,
    channel: str,
    inputs: dict[str, Input],
    reference: dict[str, dict],
    tally: Tally,
    deadline: float,
    seed: int,
) -> None:
    """Frames of good and bad rows until ``deadline``; each row checked against its kind."""
    rng = np.random.default_rng(seed)
    cheap_good = [k for k in GOOD_KINDS if k != "huge_valid_png"]
    frames = 0
    while time.monotonic() < deadline:
        kinds = list(rng.choice(cheap_good, 2))
        if frames % HUGE_EVERY == 0:
            kinds.append("huge_valid_png")
        start = (frames * 3) % len(BAD_KINDS)
        kinds += [BAD_KINDS[(start + i) % len(BAD_KINDS)] for i in range(ROWS_PER_FRAME - 2)]
        order = rng.permutation(len(kinds))
        kinds = [kinds[i] for i in order]
        labels = [f"{channel}-{frames}-{i}" for i in range(len(kinds))]
        frame = pd.DataFrame({IMAGE_COLUMN: [_cell(inputs[k]) for k in kinds]}, index=labels)
        frames += 1
        try:
            result = client.predict(frame)
        except Exception as error:  # every escape is a finding; keep loading
            tally.problem(f"{channel} frame {frames}: predict raised {error!r}")
            continue
        tally.count(tally.requests, channel, len(kinds))
        if list(result.index) != labels:
            tally.problem(f"{channel} frame {frames}: index {list(result.index)} != {labels}")
            continue
        errors = row_errors(result)
        arrays = revert_predict_to_array(result)
        for label, kind in zip(labels, kinds, strict=True):
            item = inputs[kind]
            if item.good:
                if label in errors:
                    tally.problem(f"{channel} {label} ({kind}) failed: {errors[label]}")
                elif not _same_detections(dict(arrays.loc[label]), reference[kind]):
                    tally.problem(f"{channel} {label} ({kind}): detections differ from reference")
                else:
                    tally.count(tally.answered, f"{channel}:{kind}")
            elif label not in errors:
                tally.problem(f"{channel} {label} ({kind}) was answered, expected a refusal")
            elif not re.search(item.reason, errors[label]) or label not in errors[label]:
                tally.problem(f"{channel} {label} ({kind}): unexpected reason {errors[label]!r}")
            else:
                tally.count(tally.refused, f"{channel}:{kind}")


def _demo_load(
    url: str,
    endpoints: tuple[str, ...],
    inputs: dict[str, Input],
    reference: dict[str, list[tuple]],
    tally: Tally,
    deadline: float,
) -> None:
    """Uploads of every kind, in turn, until ``deadline``; each answer checked."""
    kinds = [k for k in (*GOOD_KINDS, *BAD_KINDS) if k != "huge_valid_png"]
    sent = 0
    while time.monotonic() < deadline:
        kind = kinds[sent % len(kinds)] if sent % 8 else "huge_valid_png"
        item = inputs[kind]
        endpoint = endpoints[sent % len(endpoints)]
        sent += 1
        try:
            answer = post_form(url, _demo_fields(endpoint), item.data, filename=f"{kind}.bin")
        except Exception as error:  # a dropped connection, a timeout: a finding
            tally.problem(f"demo {kind} via {endpoint}: no answer ({error!r})")
            continue
        tally.count(tally.requests, "demo")
        tally.count(tally.statuses, str(answer.status))
        if answer.status != item.demo_status:
            tally.problem(
                f"demo {kind} via {endpoint}: HTTP {answer.status}, expected {item.demo_status}: "
                f"{answer.body[:300]!r}"
            )
            continue
        body = answer.json()
        if answer.status == 200:
            if not _close(_demo_detections(answer), reference[kind]):
                tally.problem(f"demo {kind} via {endpoint}: detections differ from reference")
            else:
                tally.count(tally.answered, f"demo:{kind}")
            continue
        message = body.get("error", {}).get("message", "")
        if body.get("ok") is not False or not re.search(item.demo_reason, message):
            tally.problem(f"demo {kind}: HTTP {answer.status} without its reason: {body!r}")
        else:
            tally.count(tally.refused, f"demo:{kind}")


def _slow_load(host: str, port: int, request: bytes, tally: Tally, deadline: float) -> None:
    """Slow peers in turn: each must be cut off within the page's deadline (plus slack)."""
    # The head must arrive within the deadline; then the page's route gives the body the same
    # deadline again (answering 408): a dribbler is held at most twice the deadline.
    limit = 2 * DEMO_REQUEST_TIMEOUT_S + CLOSE_SLACK_S
    give_up = limit + 5.0
    turn = 0
    while time.monotonic() < deadline - give_up:
        kind = ("dribble", "silent", "declared_huge")[turn % 3]
        turn += 1
        if kind == "dribble":
            # 32 bytes every 0.5 s: the ~1 kB request would take ~16 s.
            outcome = dribble(host, port, request, chunk=32, interval_s=0.5, give_up_s=give_up)
        elif kind == "silent":
            outcome = silent(host, port, give_up_s=give_up)
        else:
            outcome = declared_huge(host, port, give_up_s=give_up)
        with tally.lock:
            tally.slow_held_s[kind] = round(max(tally.slow_held_s.get(kind, 0), outcome.held_s), 2)
        tally.count(tally.slow, f"{kind}:{outcome.status or 'closed'}")
        if not outcome.closed_by_server or outcome.held_s > limit:
            tally.problem(f"slow peer {kind}: held {outcome.held_s:.1f} s (limit {limit:g} s)")
        elif kind == "declared_huge" and outcome.status != 413:
            tally.problem(f"slow peer {kind}: answered {outcome.answer[:200]!r}, expected 413")
        elif kind == "dribble" and outcome.status not in (None, 408):
            tally.problem(f"slow peer {kind}: answered {outcome.answer[:200]!r}")


def _run_threads(targets: list[tuple[str, Callable[[], None]]], deadline: float) -> None:
    threads = [threading.Thread(target=fn, name=name, daemon=True) for name, fn in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(1.0, deadline - time.monotonic()) + 120)
    stuck = [thread.name for thread in threads if thread.is_alive()]
    assert not stuck, f"load threads did not stop: {stuck}"


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
        reference = _client_reference(grpc_client, inputs)
        assert len(reference["good_png"]["scores"]) and len(reference["good_jpeg"]["scores"]), (
            "the tiny model must find the rectangles, or 'answered correctly' checks nothing"
        )
        http_reference = _client_reference(http_client, inputs)
        for kind in GOOD_KINDS:
            assert _same_detections(http_reference[kind], reference[kind]), kind
        demo_reference = {}
        for kind, item in inputs.items():
            if item.demo_status == 200:
                answer = post_form(soak_page.url, _demo_fields(demo_endpoints[0]), item.data)
                assert answer.status == 200, (kind, answer.body[:300])
                demo_reference[kind] = _demo_detections(answer)
        warm = Tally()
        _client_load(grpc_client, "warmup", inputs, reference, warm, time.monotonic() + 0.1, 0)
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
            page_host, page_port, inputs["good_png"].data, _demo_fields(demo_endpoints[0])
        )
        try:
            with MemorySampler(
                {"triton_tree": triton_server.pid, "test_process": os.getpid()}
            ) as memory:
                _run_threads(
                    [
                        (
                            "grpc",
                            lambda: _client_load(
                                grpc_client, "grpc", inputs, reference, tally, deadline, 1
                            ),
                        ),
                        (
                            "http",
                            lambda: _client_load(
                                http_client, "http", inputs, reference, tally, deadline, 2
                            ),
                        ),
                        (
                            "demo",
                            lambda: _demo_load(
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
                            lambda: _slow_load(page_host, page_port, slow_request, tally, deadline),
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
    assert _same_detections(
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
