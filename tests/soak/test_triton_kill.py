"""Triton killed with SIGKILL under load, then restarted on the same ports (issue 10, faults).

Clients send frames of good and bad rows to a server of this test's own (never a session one)
while it is killed with ``SIGKILL`` (no goodbye: connections reset, requests in flight lost)
and started again on the same ports. Two kinds of client run at once:

* *short* clients (:data:`SHORT_RETRIES` retries, :data:`SHORT_BACKOFF_S` first wait): their
  whole retry window (about 0.3 s) is far shorter than the outage (the kill, a pause of
  :data:`OUTAGE_S`, then a server start of seconds), so the frames they send during the outage
  fail, deterministically, with a reason naming the unreachable server; they are sent again
  after the restart and must then succeed;
* a *patient* client (:data:`PATIENT_RETRIES` retries, waits doubling up to 5 s: minutes in
  all) must ride through the outage with no failed frame.

Every frame that succeeds keeps its rows in place: each good row has the reference detections,
each bad row its own reason. The figures are printed and written to ``kill-figures.json``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from client import DetectionClient, revert_predict_to_array, row_errors
from client.codec import IMAGE_COLUMN
from detstack.errors import ModelNotReadyError, ServerUnreachableError
from serve import ServeConfig, TritonServer
from serve._server import find_free_ports
from tests.soak._inputs import Input, build_inputs
from tests.soak._memory import descendants

pytestmark = [pytest.mark.slow, pytest.mark.triton, pytest.mark.soak]

#: Load before the kill, pause between the kill and the restart, load after the restart.
LOAD_BEFORE_KILL_S = 3.0
OUTAGE_S = 2.0
LOAD_AFTER_RESTART_S = 3.0
#: Longest wait, after the restart, for every client to have a frame answered again.
RECOVERY_LIMIT_S = 30.0
#: Short clients: 2 retries after 0.1 s and 0.2 s (±20 %): they give up within ~0.4 s.
SHORT_RETRIES = 2
SHORT_BACKOFF_S = 0.1
#: The patient client: waits of 0.25, 0.5, 1, 2, 4, then 5 s each: over 3 minutes in all.
PATIENT_RETRIES = 40
PATIENT_BACKOFF_S = 0.25
#: Good and bad kinds of each frame (one bad row per frame, in turn).
FRAME_GOOD = ("good_png", "good_jpeg", "good_png_b")
FRAME_BAD = ("not_an_image", "truncated_png", "corrupt_tiff", "bomb_header", "empty")
#: What a frame that failed in the outage may say (the server is gone, or still loading).
OUTAGE_ERRORS = (ServerUnreachableError, ModelNotReadyError)


@dataclass(frozen=True)
class Sent:
    """One frame a client sent and what came of it."""

    client: str
    frame: pd.DataFrame
    kinds: tuple[str, ...]
    started: float
    ended: float
    result: pd.DataFrame | None = None
    error: Exception | None = None


def _cell(item: Input) -> str:
    return item.cell if item.cell is not None else base64.b64encode(item.data).decode("ascii")


def _frame(inputs: dict[str, Input], client: str, number: int) -> tuple[pd.DataFrame, tuple]:
    kinds = (*FRAME_GOOD, FRAME_BAD[number % len(FRAME_BAD)])
    order = np.random.default_rng(number).permutation(len(kinds))
    kinds = tuple(kinds[i] for i in order)
    labels = [f"{client}-{number}-{kind}" for kind in kinds]
    return pd.DataFrame({IMAGE_COLUMN: [_cell(inputs[k]) for k in kinds]}, index=labels), kinds


def _check_frame(
    sent: Sent, result: pd.DataFrame, inputs: dict[str, Input], reference: dict
) -> list[str]:
    """Why ``result`` is not the right answer to ``sent.frame`` (empty when it is)."""
    labels = list(sent.frame.index)
    if list(result.index) != labels:
        return [f"{labels[0]}...: index {list(result.index)} != {labels}"]
    problems = []
    errors = row_errors(result)
    arrays = revert_predict_to_array(result)
    for label, kind in zip(labels, sent.kinds, strict=True):
        item = inputs[kind]
        if item.good:
            want = reference[kind]
            got = arrays.loc[label]
            if label in errors:
                problems.append(f"{label}: a good row failed: {errors[label]}")
            elif not (
                got["boxes"].shape == want["boxes"].shape
                and np.allclose(got["boxes"], want["boxes"], atol=1e-3)
                and np.array_equal(got["labels"], want["labels"])
            ):
                problems.append(f"{label}: detections differ from the reference")
        elif label not in errors or not re.search(item.reason, errors[label]):
            problems.append(
                f"{label}: expected a refusal matching {item.reason!r}, got "
                f"{errors.get(label, 'an answer')!r}"
            )
    return problems


def _load(
    client: DetectionClient,
    name: str,
    inputs: dict[str, Input],
    stop: threading.Event,
    log: list[Sent],
    lock: threading.Lock,
) -> None:
    number = 0
    while not stop.is_set():
        frame, kinds = _frame(inputs, name, number)
        number += 1
        started = time.monotonic()
        try:
            result, error = client.predict(frame), None
        except Exception as raised:  # judged below: only outage errors are allowed
            result, error = None, raised
        with lock:
            log.append(Sent(name, frame, kinds, started, time.monotonic(), result, error))
        if error is not None:
            time.sleep(0.05)  # a failing client must not spin


def _all_recovered(log: list[Sent], lock: threading.Lock, names, since: float) -> bool:
    with lock:
        recovered = {s.client for s in log if s.started > since and s.error is None}
    return set(names) <= recovered


def _shm_prefix(pid: int) -> str | None:
    """The python backend's shared-memory name prefix on ``pid``'s command line."""
    try:
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    for argument in arguments:
        match = re.search(rb"shm-region-prefix-name=(\S+)", argument)
        if match:
            return match[1].decode()
    return None


@pytest.fixture
def fixed_port_servers(serving_repository) -> Iterator[Callable[[], TritonServer]]:
    """Start servers of ``serving_repository`` on one set of free ports; all stopped after.

    (``triton_server_factory`` always picks new ports, and a restart must reuse them.)
    """
    http_port, grpc_port, metrics_port = find_free_ports("127.0.0.1", 3)
    config = ServeConfig(
        repository=str(serving_repository),
        host="127.0.0.1",
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        startup_timeout_s=180.0,
        exit_timeout_s=3,
    )
    servers: list[TritonServer] = []

    def start() -> TritonServer:
        servers.append(TritonServer(config))
        return servers[-1].start()

    yield start
    for server in reversed(servers):
        server.stop()  # a killed one: reaps it and ends its stubs' process group


def test_triton_killed_mid_load_then_restarted_loses_no_good_row_and_failed_rows_say_why(
    fixed_port_servers, tmp_path
):
    inputs = build_inputs()
    server = fixed_port_servers()
    http_port, grpc_port = server.endpoints.http_port, server.endpoints.grpc_port
    address = {"grpc": f"127.0.0.1:{grpc_port}", "http": f"127.0.0.1:{http_port}"}
    short = {"retries": SHORT_RETRIES, "backoff": SHORT_BACKOFF_S, "timeout": 30}
    clients = {
        "short-grpc": DetectionClient(address["grpc"], protocol="grpc", **short),
        "short-http": DetectionClient(address["http"], protocol="http", **short),
        "patient-grpc": DetectionClient(
            address["grpc"], retries=PATIENT_RETRIES, backoff=PATIENT_BACKOFF_S, timeout=30
        ),
    }
    killed_prefix = None
    leftovers: list[Path] = []
    log: list[Sent] = []
    lock = threading.Lock()
    stop = threading.Event()
    try:
        clients["short-grpc"].wait_until_ready(timeout=60)
        reference_frame = pd.DataFrame(
            {IMAGE_COLUMN: [_cell(inputs[k]) for k in FRAME_GOOD]}, index=list(FRAME_GOOD)
        )
        reference = dict(
            revert_predict_to_array(clients["short-grpc"].predict(reference_frame)).iterrows()
        )
        assert all(len(reference[k]["scores"]) for k in FRAME_GOOD), "the model must find them"

        threads = [
            threading.Thread(target=_load, args=(c, name, inputs, stop, log, lock), daemon=True)
            for name, c in clients.items()
        ]
        for thread in threads:
            thread.start()
        time.sleep(LOAD_BEFORE_KILL_S)
        killed_pid = server.pid
        killed_stubs = descendants(killed_pid)
        killed_prefix = _shm_prefix(killed_pid)
        killed_at = time.monotonic()
        os.kill(killed_pid, signal.SIGKILL)
        while server.is_alive() and time.monotonic() < killed_at + 30:  # reaps it
            time.sleep(0.05)
        assert not server.is_alive(), "SIGKILL did not end tritonserver"
        time.sleep(OUTAGE_S)
        restart_started = time.monotonic()
        restarted = fixed_port_servers()
        ready_at = time.monotonic()
        # Load on until every client has had a frame answered that it sent after the restart
        # (the patient one may be in a back-off of up to 5 s when the server comes back).
        time.sleep(LOAD_AFTER_RESTART_S)
        while time.monotonic() < ready_at + RECOVERY_LIMIT_S and not _all_recovered(
            log, lock, clients, ready_at
        ):
            time.sleep(0.2)
        stop.set()
        for thread in threads:
            thread.join(timeout=240)
        assert not any(t.is_alive() for t in threads), "a load thread did not stop"
        orphans = {pid for pid in killed_stubs if Path(f"/proc/{pid}").exists()}

        # Resend, after the restart, every frame that failed.
        failed = [s for s in log if s.error is not None]
        resent = []
        for sent in failed:
            result = clients["short-grpc"].predict(sent.frame)
            resent.append(_check_frame(sent, result, inputs, reference))
    finally:
        stop.set()  # also when the restart failed: the load threads end
        for client in clients.values():
            client.close()
        if killed_prefix:  # a SIGKILLed server leaves its shared-memory regions behind
            leftovers = sorted(Path("/dev/shm").glob(f"{killed_prefix}*"))
            for leftover in leftovers:
                leftover.unlink(missing_ok=True)

    answered = [s for s in log if s.error is None]
    problems = [p for s in answered for p in _check_frame(s, s.result, inputs, reference)]
    by_client = Counter(s.client for s in log)
    failed_by_client = Counter(s.client for s in failed)
    reasons = Counter(type(s.error).__name__ for s in failed)
    figures = {
        "frames_sent": dict(by_client),
        "rows_sent": sum(len(s.frame) for s in log),
        "frames_failed_in_outage": dict(failed_by_client),
        "failure_types": dict(reasons),
        "failure_example": str(failed[0].error) if failed else None,
        "outage_s": round(ready_at - killed_at, 2),
        "restart_s": round(ready_at - restart_started, 2),
        "killed_stubs_left_running": sorted(orphans),
        "shm_regions_left_by_the_kill": len(leftovers),
        "resent_frames_ok": sum(not r for r in resent),
        "answered_frame_problems": len(problems),
    }
    (tmp_path / "kill-figures.json").write_text(json.dumps(figures, indent=2), encoding="utf-8")
    print("kill figures:", json.dumps(figures, indent=2))

    assert restarted.is_alive() and restarted.endpoints.grpc_port == grpc_port
    # Every answered frame is aligned and right, good rows and bad rows alike.
    assert not problems, "\n".join(problems[:20])
    # Only the outage failed frames, and each says the server was unreachable (or not ready).
    for sent in failed:
        assert isinstance(sent.error, OUTAGE_ERRORS), repr(sent.error)
        assert sent.client.startswith("short"), f"the patient client failed: {sent.error}"
        where = address[sent.client.rsplit("-", 1)[1]]
        assert where in str(sent.error), sent.error
        assert re.search(r"unreachable|not ready|dropped the connection", str(sent.error))
        assert killed_at - 1.0 <= sent.ended, f"failed before the kill: {sent.error}"
        assert sent.started <= ready_at + 1.0, f"failed after the restart: {sent.error}"
    # The short clients did meet the outage (the point of the test), on both protocols.
    assert failed_by_client["short-grpc"] and failed_by_client["short-http"], figures
    # The patient client sent frames across the outage and rode through it.
    assert any(s.started < killed_at < s.ended for s in log if s.client == "patient-grpc")
    # Sent again after the restart, every failed frame is answered in full.
    assert resent and all(not r for r in resent), [r for r in resent if r][:5]
    # Load went on after the restart, on every client.
    for name in clients:
        assert any(s.started > ready_at and s.error is None for s in log if s.client == name)
