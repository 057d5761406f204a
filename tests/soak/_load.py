"""The soak's load: client frames, demo uploads and slow peers, and how answers are tallied."""

from __future__ import annotations

import base64
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from client import DetectionClient, revert_predict_to_array, row_errors
from client.codec import IMAGE_COLUMN
from tests.demo.conftest import post_form
from tests.soak._inputs import (
    BAD_KINDS,
    GOOD_KINDS,
    Input,
)
from tests.soak._slow import declared_huge, dribble, silent

#: The demo page's deadline for a whole request: slow peers must be cut off after it.
DEMO_REQUEST_TIMEOUT_S = 3.0
#: Slack on top of that deadline for a loaded 2-core machine (event loop, scheduling).
CLOSE_SLACK_S = 3.0
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


def cell_of(item: Input) -> str:
    return item.cell if item.cell is not None else base64.b64encode(item.data).decode("ascii")


def same_detections(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> bool:
    if got["boxes"].shape != want["boxes"].shape:
        return False
    return bool(
        np.allclose(got["boxes"], want["boxes"], atol=BOX_ATOL)
        and np.array_equal(got["labels"], want["labels"])
        and np.allclose(got["scores"], want["scores"], atol=1e-4)
    )


def client_reference(client: DetectionClient, inputs: dict[str, Input]) -> dict[str, dict]:
    """Each good kind's detections, computed once before the load."""
    kinds = list(GOOD_KINDS)
    frame = pd.DataFrame({IMAGE_COLUMN: [cell_of(inputs[k]) for k in kinds]}, index=kinds)
    result = client.predict(frame)
    assert row_errors(result) == {}, row_errors(result)
    arrays = revert_predict_to_array(result)
    return {kind: dict(arrays.loc[kind]) for kind in kinds}


def demo_fields(endpoint: str) -> dict[str, str]:
    return {"endpoint": endpoint, "threshold": "0.5"}


def demo_detections(answer) -> list[tuple]:
    return [
        (tuple(d["box"]), d["score"], d["label"], d["name"]) for d in answer.json()["detections"]
    ]


def close_detections(got: list[tuple], want: list[tuple]) -> bool:
    if len(got) != len(want):
        return False
    return all(
        np.allclose(g[0], w[0], atol=0.02) and abs(g[1] - w[1]) < 2e-4 and g[2:] == w[2:]
        for g, w in zip(got, want, strict=True)
    )


# --------------------------------------------------------------------------- the load


def client_load(
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
        frame = pd.DataFrame({IMAGE_COLUMN: [cell_of(inputs[k]) for k in kinds]}, index=labels)
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
                elif not same_detections(dict(arrays.loc[label]), reference[kind]):
                    tally.problem(f"{channel} {label} ({kind}): detections differ from reference")
                else:
                    tally.count(tally.answered, f"{channel}:{kind}")
            elif label not in errors:
                tally.problem(f"{channel} {label} ({kind}) was answered, expected a refusal")
            elif not re.search(item.reason, errors[label]) or label not in errors[label]:
                tally.problem(f"{channel} {label} ({kind}): unexpected reason {errors[label]!r}")
            else:
                tally.count(tally.refused, f"{channel}:{kind}")


def demo_load(
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
            answer = post_form(url, demo_fields(endpoint), item.data, filename=f"{kind}.bin")
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
            if not close_detections(demo_detections(answer), reference[kind]):
                tally.problem(f"demo {kind} via {endpoint}: detections differ from reference")
            else:
                tally.count(tally.answered, f"demo:{kind}")
            continue
        message = body.get("error", {}).get("message", "")
        if body.get("ok") is not False or not re.search(item.demo_reason, message):
            tally.problem(f"demo {kind}: HTTP {answer.status} without its reason: {body!r}")
        else:
            tally.count(tally.refused, f"demo:{kind}")


def slow_load(host: str, port: int, request: bytes, tally: Tally, deadline: float) -> None:
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


def run_threads(targets: list[tuple[str, Callable[[], None]]], deadline: float) -> None:
    threads = [threading.Thread(target=fn, name=name, daemon=True) for name, fn in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(1.0, deadline - time.monotonic()) + 120)
    stuck = [thread.name for thread in threads if thread.is_alive()]
    assert not stuck, f"load threads did not stop: {stuck}"
