"""DetectionClient over three real Triton servers on loopback: one is killed and restarted.

The servers serve the echo stand-in model (tests/fixtures/triton.py), which answers one box
``[0, 0, width, height]`` of the image it was sent, after a short sleep: every row's answer
names its own image, so a row answered for another one shows at once, and the sleep makes the
servers, not this loaded machine's CPUs, set the pace. The killed server comes back on the
same ports, as a restarted pod behind the same address would.

The kill test prints the throughput before, during and after the loss (``pytest -s``).
"""

from __future__ import annotations

import io
import json
import threading
import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cli.main import main
from client import DetectionClient, encode_images, row_errors
from client.codec import encode_image
from serve import ServeConfig, TritonServer
from serve._server import find_free_ports
from tests.fixtures.triton import write_echo_repository

pytestmark = [pytest.mark.triton, pytest.mark.slow]

#: Seconds the echo model sleeps per request: ~30 requests/s per server at most.
DELAY_S = 0.03
ROWS = 240
#: Seconds the killed server stays down before it is started again.
DOWN_S = 2.0
BAD_ROWS = {"not-base64": "not base64!", "missing": None, "not-an-image": encode_image(b"hi")}


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (width % 256, height % 256, 99)).save(buffer, "PNG")
    return buffer.getvalue()


def _frame() -> pd.DataFrame:
    """``ROWS`` small images of distinct sizes, with bad rows mixed in among them."""
    sizes = [(16 + i % 40, 16 + i // 40) for i in range(ROWS)]
    frame = encode_images([_png(w, h) for w, h in sizes], index=[f"r{i}" for i in range(ROWS)])
    parts = []
    for position, (label, cell) in enumerate(BAD_ROWS.items()):
        parts.append(frame.iloc[position * 80 : (position + 1) * 80])
        parts.append(pd.DataFrame({"image_data": pd.Series({label: cell}, dtype=object)}))
    return pd.concat(parts)


def _fixed_port_config(repository, run_dir) -> ServeConfig:
    http, grpc, metrics = find_free_ports("127.0.0.1", 3)
    return ServeConfig(
        repository=str(repository),
        host="127.0.0.1",
        http_port=http,
        grpc_port=grpc,
        metrics_port=metrics,
        run_dir=run_dir,
        startup_timeout_s=180.0,
        exit_timeout_s=3,
    )


def _succeeded(client: DetectionClient) -> int:
    return sum(s.succeeded for s in client.endpoint_stats())


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_killing_one_of_three_servers_mid_predict_loses_no_row_and_load_returns_after_restart(
    tmp_path, triton_server_factory, protocol
):
    repository = write_echo_repository(tmp_path / "repository", delay_s=DELAY_S)
    config = _fixed_port_config(repository, tmp_path / "run-victim")
    victim = TritonServer(config)
    restarted: TritonServer | None = None
    try:
        # One after the other, on this thread: a server dies with the thread that started it.
        victim.start()
        others = [triton_server_factory(repository) for _ in range(2)]
        frame = _frame()
        servers = [victim, *others]
        urls = [s.endpoints.grpc if protocol == "grpc" else s.endpoints.http for s in servers]
        with DetectionClient(
            urls[1], protocol=protocol
        ) as single:  # the reference: one server, no failure
            single.wait_until_ready(timeout=30)
            reference = single.predict(frame)

        client = DetectionClient(
            urls,
            protocol=protocol,
            concurrency=6,
            retries=6,
            backoff=0.1,
            probe_backoff=0.25,
            probe_backoff_max=1.0,
            timeout=30,
        )
        results: list[pd.DataFrame] = []
        failures: list[BaseException] = []
        stop = threading.Event()

        def keep_predicting() -> None:
            try:
                while not stop.is_set():
                    results.append(client.predict(frame))
            except BaseException as error:  # reported by the test thread
                failures.append(error)

        with client:
            client.wait_until_ready(timeout=30)
            worker = threading.Thread(target=keep_predicting, name="predict")
            marks = {"start": (time.perf_counter(), _succeeded(client))}
            worker.start()
            try:
                _wait_for(lambda: _succeeded(client) >= 150, 60, "150 answered rows")
                marks["kill"] = (time.perf_counter(), _succeeded(client))
                victim.kill()  # SIGKILL, requests in flight on it are cut off
                _wait_for(lambda: not client.endpoint_stats()[0].healthy, 10, "the ejection")
                time.sleep(DOWN_S)  # down a while, as a pod being rescheduled would be
                restarted = TritonServer(config).start()  # same ports
                _wait_for(lambda: client.endpoint_stats()[0].healthy, 30, "the probe")
                marks["back"] = (time.perf_counter(), _succeeded(client))
                sent_when_back = client.endpoint_stats()[0].sent
                _wait_for(
                    lambda: (
                        client.endpoint_stats()[0].sent >= sent_when_back + 60
                        and time.perf_counter() - marks["back"][0] >= 2
                    ),
                    60,
                    "requests on the restarted server",
                )
                marks["end"] = (time.perf_counter(), _succeeded(client))
            finally:
                stop.set()
                worker.join(120)
            stats = client.endpoint_stats()

        assert not failures, f"predict raised: {failures[0]!r}"
        assert len(results) >= 2
        for result in results:  # every good row answered, each for its own image
            pd.testing.assert_frame_equal(result, reference)
            assert row_errors(result) == row_errors(reference)
        assert set(row_errors(reference)) == set(BAD_ROWS)
        assert reference.drop(index=list(BAD_ROWS)).notna().all().all()

        killed, *survivors = stats
        assert killed.ejections >= 1 and killed.failures >= 1 and killed.healthy
        assert killed.sent - sent_when_back >= 60, "load must move back to the restarted server"
        assert all(s.healthy and s.ejections == 0 and s.failures == 0 for s in survivors)

        phases = {}
        for name, (begin, end) in {
            "before (3 servers)": ("start", "kill"),
            "while one is down": ("kill", "back"),
            "after the restart": ("back", "end"),
        }.items():
            (t0, n0), (t1, n1) = marks[begin], marks[end]
            phases[name] = (n1 - n0) / (t1 - t0)
        print(
            f"\nmulti-endpoint kill test ({protocol}), {len(urls)} servers, echo model "
            f"{DELAY_S * 1e3:.0f} ms, concurrency 6, {len(results)} predict calls of "
            f"{len(frame)} rows:"
        )
        for name, rate in phases.items():
            print(f"  {name:20s} {rate:7.1f} rows/s")
        down_s = marks["back"][0] - marks["kill"][0]
        print(f"  kill -> back in rotation: {down_s:.1f} s (includes the server's restart)")
        for s in stats:
            print(
                f"  {s.url}: sent {s.sent}, succeeded {s.succeeded}, failures {s.failures}, "
                f"ejections {s.ejections}, probes {s.probes}"
            )
        assert all(rate > 0 for rate in phases.values())
    finally:
        victim.kill()
        if restarted is not None:
            restarted.stop()


def test_requests_fail_over_from_a_dead_address_and_statistics_sum_the_live_servers(
    tmp_path, triton_server_factory
):
    repository = write_echo_repository(tmp_path / "repository")
    live = [triton_server_factory(repository) for _ in range(2)]
    (dead_port,) = find_free_ports("127.0.0.1", 1)
    urls = [f"http://127.0.0.1:{dead_port}"] + [server.endpoints.http_url for server in live]
    frame = encode_images([_png(20 + i, 30) for i in range(30)])
    with DetectionClient(urls, protocol="http", concurrency=3, backoff=0.05) as client:
        client.wait_until_ready(timeout=30)
        result = client.predict(frame)
        stats = client.endpoint_stats()
        # Triton counts a request just after answering it: wait until all 30 are counted.
        _wait_for(lambda: _inference_counts(client) == 30, 10, "the servers' statistics")
        per_endpoint = client.statistics_per_endpoint()
        summed = client.statistics()

    assert not row_errors(result) and result.notna().all().all()
    np.testing.assert_array_equal(result.index, frame.index)
    dead, *alive = stats
    assert not dead.healthy and dead.sent == 0, "wait_until_ready took the dead address out"
    assert sum(s.succeeded for s in alive) >= 30 and all(s.sent > 0 for s in alive)
    assert per_endpoint[dead.url] is None
    (model,) = summed["model_stats"]
    assert int(model["inference_count"]) == 30

    picture = tmp_path / "picture.png"
    picture.write_bytes(_png(40, 30))
    command = ["predict", str(picture), "--protocol", "http", "--out", str(tmp_path / "out")]
    for url in urls:
        command += ["--url", url]
    assert main(command) == 0
    document = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert document["url"] == [f"http://{url.removeprefix('http://')}" for url in urls]
    assert document["images"][0]["detections"][0]["box"] == [0, 0, 40, 30]


def _inference_counts(client: DetectionClient) -> int:
    return sum(
        int(entry["inference_count"])
        for document in client.statistics_per_endpoint().values()
        if document is not None
        for entry in document["model_stats"]
    )
