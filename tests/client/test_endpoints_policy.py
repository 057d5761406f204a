"""The multi-endpoint policy (client._endpoints) with fake transports: no server, no sleeping.

Routing (least outstanding requests, ties in turn), ejection on transient failures only,
probing back in with a doubling back-off, failing over within the retry budget, the error that
names every endpoint, statistics summed over servers, and rows kept aligned by
``DetectionClient`` when an endpoint dies under it.
"""

from __future__ import annotations

import io
import logging
import threading
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from client import (
    ClientConfig,
    DetectionClient,
    encode_images,
    resolve_endpoints,
    revert_predict_to_array,
    row_errors,
)
from client._endpoints import EndpointPool
from client._statistics import merge_statistics
from client._transport import TransportError
from detstack.errors import (
    BadInputError,
    ConfigError,
    ServerUnreachableError,
    UnauthorizedError,
)
from detstack.images import probe_image


class FakeTransport:
    """Answers like a Triton transport; ``up=False`` refuses like a dead server."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.settings = SimpleNamespace(model="m", address=name)
        self.up = True
        self.ready = True
        self.error: TransportError | None = None  # raised by infer() instead of answering
        self.gate: threading.Event | None = None  # infer() waits on it when set
        self.entered = threading.Event()
        self.infers = 0
        self.readiness_checks = 0
        self.closed = False

    def _check_up(self, what: str) -> None:
        if not self.up:
            raise TransportError(
                ServerUnreachableError(f"{self.name} is unreachable for {what} (refused)"),
                transient=True,
            )

    def infer(self, payload):
        self.infers += 1
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        self._check_up("an inference request")
        if self.error is not None:
            raise self.error
        width, height = probe_image(bytes(payload.array.reshape(-1)[0]))
        outputs = {
            "boxes": np.array([[0, 0, width, height]], dtype=np.float32),
            "scores": np.array([0.9], dtype=np.float32),
            "labels": np.array([1], dtype=np.int64),
        }
        return outputs, "1"

    def server_ready(self) -> bool:
        self.readiness_checks += 1
        self._check_up("a readiness check")
        return self.ready

    def model_ready(self) -> bool:
        self._check_up("a model readiness check")
        return self.ready

    def model_config(self):
        self._check_up("a model configuration request")
        return {"name": "m"}

    def statistics(self):
        self._check_up("a statistics request")
        return {"model_stats": [{"name": "m", "version": "1", "inference_count": 1}]}

    def close(self) -> None:
        self.closed = True


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _pool(count: int, clock: FakeClock | None = None, **options) -> tuple[EndpointPool, list]:
    transports = [FakeTransport(f"e{i}") for i in range(count)]
    pool = EndpointPool(
        [(f"grpc://e{i}:8001", t) for i, t in enumerate(transports)],
        clock=clock or FakeClock(),
        **options,
    )
    return pool, transports


def _answering(pool: EndpointPool, sleeps: list[float] | None = None, retries: int = 4):
    """A request that fails where the fake transport is down; returns who answered."""
    sleeps = [] if sleeps is None else sleeps

    def request(transport):
        transport._check_up("an inference request")
        if transport.error is not None:
            raise transport.error
        return transport.name

    answer, attempts = pool.call(
        request, retries=retries, backoff=0.25, sleep=sleeps.append, jitter=lambda: 0.5
    )
    return answer, attempts


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (width % 256, height % 256, 7)).save(buffer, "PNG")
    return buffer.getvalue()


# --- routing -----------------------------------------------------------------------------


def test_equally_loaded_endpoints_take_requests_in_turn():
    pool, _ = _pool(3)
    answers = [_answering(pool)[0] for _ in range(6)]
    assert answers == ["e0", "e1", "e2", "e0", "e1", "e2"]
    assert [s.sent for s in pool.stats()] == [2, 2, 2]


def test_a_request_goes_to_the_endpoint_with_the_fewest_requests_in_flight():
    pool, transports = _pool(3)
    slow = transports[0]
    slow.gate = threading.Event()
    held = threading.Thread(target=lambda: _call_infer(pool))
    held.start()
    try:
        assert slow.entered.wait(5)
        assert [s.outstanding for s in pool.stats()] == [1, 0, 0]
        answers = [_answering(pool)[0] for _ in range(4)]
    finally:
        slow.gate.set()
        held.join(5)
    assert "e0" not in answers, "the busy endpoint must not get requests while others are idle"
    assert sorted(answers) == ["e1", "e1", "e2", "e2"]
    assert [s.outstanding for s in pool.stats()] == [0, 0, 0]


def _call_infer(pool: EndpointPool) -> None:
    payload = SimpleNamespace(array=np.array([_png(4, 4)], dtype=np.object_))
    pool.call(lambda t: t.infer(payload), retries=0, backoff=0.0)


# --- ejection and failover ---------------------------------------------------------------


def test_a_refused_request_is_retried_at_once_on_another_endpoint_and_the_dead_one_taken_out():
    pool, transports = _pool(3)
    transports[0].up = False
    sleeps: list[float] = []
    answer, attempts = _answering(pool, sleeps)
    assert answer in ("e1", "e2") and attempts == 2
    assert sleeps == [], "failing over to a healthy endpoint must not wait"
    first = pool.stats()[0]
    assert (first.healthy, first.ejections, first.failures) == (False, 1, 1)
    assert "refused" in first.last_error
    later = [_answering(pool)[0] for _ in range(6)]
    assert "e0" not in later
    assert pool.stats()[0].sent == 1


@pytest.mark.parametrize(
    "error",
    [
        TransportError(ServerUnreachableError("e0 did not answer within 1 s"), transient=False),
        TransportError(BadInputError("e0 rejected an inference request"), transient=False),
    ],
    ids=["timeout", "rejected-input"],
)
def test_timeouts_and_rejected_requests_fail_that_request_but_keep_the_endpoint_in(error):
    pool, transports = _pool(2)
    transports[0].error = error
    with pytest.raises(type(error.error), match="e0"):
        _answering(pool)
    first = pool.stats()[0]
    assert first.healthy and first.failures == 1 and first.ejections == 0


def test_an_ejected_endpoint_is_probed_after_its_backoff_which_doubles_until_it_is_back():
    clock = FakeClock()
    pool, transports = _pool(2, clock, probe_backoff=0.5, probe_backoff_max=1.5)
    dead = transports[0]
    dead.up = False
    _answering(pool)  # e0 refuses: out, first probe 0.5 s later
    clock.now += 0.4
    _answering(pool)
    assert dead.readiness_checks == 0, "no probe before the back-off has passed"
    clock.now += 0.2  # 0.6 s: probe (still down), next one 1.0 s later
    _answering(pool)
    assert dead.readiness_checks == 1
    clock.now += 0.9
    _answering(pool)
    assert dead.readiness_checks == 1
    clock.now += 0.2  # probe fails again: next wait doubles to 2.0, capped at 1.5 s
    _answering(pool)
    assert dead.readiness_checks == 2
    dead.up = True
    clock.now += 1.4
    _answering(pool)
    assert dead.readiness_checks == 2
    clock.now += 0.2
    answers = [_answering(pool)[0] for _ in range(4)]
    stats = pool.stats()[0]
    assert stats.healthy and stats.probes == 3 and stats.ejections == 1
    assert answers.count("e0") == 2, "the endpoint that is back takes its share at once"


def test_a_not_ready_endpoint_stays_out_until_its_probe_finds_it_ready():
    clock = FakeClock()
    pool, transports = _pool(2, clock)
    transports[0].up = False
    _answering(pool)
    transports[0].up = True
    transports[0].ready = False  # listening again, model still loading
    clock.now += 1
    _answering(pool)
    assert not pool.stats()[0].healthy
    assert pool.stats()[0].last_error == "not ready"


def test_a_late_failure_from_before_the_endpoint_came_back_does_not_take_it_out_again():
    clock = FakeClock()
    pool, transports = _pool(2, clock)
    early = pool._acquire()  # sent to e0 before it died, answered late
    assert early.endpoint.index == 0
    transports[0].up = False
    _answering(pool)  # goes to e1 (e0 has one in flight)
    failing = pool._acquire(avoid={1})
    refused = TransportError(ServerUnreachableError("e0 refused"), transient=True)
    pool._release(failing, refused, aborted=False)
    assert not pool.stats()[0].healthy
    transports[0].up = True
    clock.now += 1
    _answering(pool)  # the probe puts e0 back
    assert pool.stats()[0].healthy
    pool._release(early, refused, aborted=False)
    stats = pool.stats()[0]
    assert stats.healthy and stats.ejections == 1 and stats.outstanding == 0


def test_when_every_endpoint_is_down_the_error_names_each_one_after_the_retry_budget():
    pool, transports = _pool(3)
    for transport in transports:
        transport.up = False
    sleeps: list[float] = []
    with pytest.raises(ServerUnreachableError) as raised:
        _answering(pool, sleeps, retries=5)
    message = str(raised.value)
    assert "all 3 endpoints are out of service" in message
    for index in range(3):
        assert f"grpc://e{index}:8001" in message
    assert sum(s.sent for s in pool.stats()) == 6, "1 attempt + 5 retries, no more"
    assert sleeps == [0.25, 0.5, 1.0], "no wait before every endpoint has failed once"


def test_a_single_endpoint_retries_with_backoff_exactly_as_one_url_always_did():
    pool, transports = _pool(1)
    transports[0].up = False
    sleeps: list[float] = []
    with pytest.raises(ServerUnreachableError) as raised:
        _answering(pool, sleeps, retries=3)
    assert sleeps == [0.25, 0.5, 1.0]
    assert "out of service" not in str(raised.value)
    assert str(raised.value).startswith("e0 is unreachable")
    transports[0].up = True
    assert _answering(pool, sleeps) == ("e0", 1)
    assert pool.stats()[0].healthy, "an answer puts the only endpoint back"


def test_a_refused_token_is_raised_at_once_without_trying_other_endpoints():
    pool, transports = _pool(2)
    transports[0].error = TransportError(UnauthorizedError("e0 refused the token"), False)
    with pytest.raises(UnauthorizedError):
        _answering(pool)
    assert [s.sent for s in pool.stats()] == [1, 0]


# --- the client --------------------------------------------------------------------------


@pytest.fixture
def fake_endpoints(monkeypatch):
    """``DetectionClient`` over fake transports: ``{address: FakeTransport}``."""
    transports: dict[str, FakeTransport] = {}

    def open_fake(settings):
        transport = FakeTransport(settings.address)
        transports[settings.address] = transport
        return transport

    monkeypatch.setattr("client._client.open_transport", open_fake)
    return transports


def test_predict_keeps_every_row_aligned_when_an_endpoint_dies_mid_run(fake_endpoints):
    sizes = [(8 + i % 17, 5 + i // 17) for i in range(120)]
    frame = encode_images([_png(w, h) for w, h in sizes], index=[f"r{i}" for i in range(120)])
    frame.loc["bad"] = "not base64!"
    client = DetectionClient(
        ["a:1", "b:1", "c:1"], concurrency=6, backoff=0.01, probe_backoff=60, probe_backoff_max=60
    )
    with client:
        dying = fake_endpoints["a:1"]
        original = dying.infer

        def infer_then_die(payload):
            if dying.infers >= 10:
                dying.up = False
            return original(payload)

        dying.infer = infer_then_die
        result = client.predict(frame)
        stats = {s.url: s for s in client.endpoint_stats()}

    assert list(result.index) == list(frame.index)
    assert set(row_errors(result)) == {"bad"}
    arrays = revert_predict_to_array(result.drop(index="bad"))
    for i, (width, height) in enumerate(sizes):
        np.testing.assert_array_equal(arrays.loc[f"r{i}", "boxes"], [[0, 0, width, height]])
    assert not stats["grpc://a:1"].healthy
    assert stats["grpc://a:1"].succeeded == 10
    assert sum(s.succeeded for s in stats.values()) == 120 + 1  # the rows, and the model config


def test_retries_are_logged_on_the_client_logger_as_they_always_were(fake_endpoints, caplog):
    caplog.set_level(logging.INFO, logger="client._client")
    frame = encode_images([_png(9, 9)])
    with DetectionClient(["a:1", "b:1"], backoff=0.01) as client:
        fake_endpoints["a:1"].up = False
        client.predict(frame)
    retries = [r for r in caplog.records if r.name == "client._client" and "retry" in r.message]
    assert retries and "a:1" in retries[0].message


def test_wait_until_ready_needs_one_ready_endpoint_and_takes_the_others_out(fake_endpoints):
    with DetectionClient(["a:1", "b:1"]) as client:
        fake_endpoints["a:1"].up = False
        client.wait_until_ready(timeout=1, poll=0.01)
        healthy = [s.healthy for s in client.endpoint_stats()]
        fake_endpoints["b:1"].ready = False
        with pytest.raises(ServerUnreachableError) as raised:
            client.wait_until_ready(timeout=0.05, poll=0.01)
    assert healthy == [False, True]
    assert "none of the 2 endpoints is ready" in str(raised.value)
    assert "a:1" in str(raised.value) and "b:1" in str(raised.value)


def test_statistics_of_several_endpoints_are_summed_and_kept_per_endpoint(fake_endpoints):
    with DetectionClient(["a:1", "b:1", "c:1"]) as client:
        fake_endpoints["c:1"].up = False
        summed = client.statistics()
        each = client.statistics_per_endpoint()
    assert summed["model_stats"][0]["inference_count"] == 2
    assert each["grpc://c:1"] is None and each["grpc://a:1"] is not None


def test_closing_the_client_closes_every_endpoint(fake_endpoints):
    client = DetectionClient(["a:1", "b:1"])
    assert repr(client) == "DetectionClient(grpc://a:1, grpc://b:1, model='my-detection-model')"
    client.close()
    assert all(t.closed for t in fake_endpoints.values())


# --- configuration and statistics --------------------------------------------------------


def test_client_config_takes_a_sequence_of_urls_and_keeps_one_url_as_it_was():
    several = ClientConfig(url=["grpc://a:9001", "b"])
    assert several.url == ("grpc://a:9001", "b")
    assert several.addresses == ("a:9001", "b:8001")
    assert several.address == "a:9001"
    one = ClientConfig(url="localhost")
    assert one.url == "localhost" and one.urls == ("localhost",)
    assert one.addresses == ("localhost:8001",)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ([], "at least one"),
        (["a:1", "grpc://a:1"], "a:1 more than once"),
        ("a:1,b:1", "as a list"),
        (["a:1", 5], "sequence"),
    ],
)
def test_client_config_refuses_url_lists_that_cannot_work(url, message):
    with pytest.raises(ConfigError, match=message):
        ClientConfig(url=url)


def test_merge_statistics_adds_counts_of_http_ints_and_grpc_strings_per_model_version():
    http = {
        "model_stats": [
            {
                "name": "m",
                "version": "1",
                "last_inference": 5,
                "inference_count": 3,
                "inference_stats": {"success": {"count": 3, "ns": 300}},
                "batch_stats": [{"batch_size": 1, "compute_infer": {"count": 3, "ns": 30}}],
            }
        ]
    }
    grpc = {
        "model_stats": [
            {
                "name": "m",
                "version": "1",
                "last_inference": "9",
                "inference_count": "2",
                "inference_stats": {"success": {"count": "2", "ns": "200"}},
                "batch_stats": [{"batch_size": "1", "compute_infer": {"count": "2", "ns": "20"}}],
            },
            {"name": "m", "version": "2", "inference_count": "4"},
        ]
    }
    merged = merge_statistics([http, grpc])
    first, second = merged["model_stats"]
    assert first["inference_count"] == 5 and first["last_inference"] == 9
    assert first["inference_stats"]["success"] == {"count": 5, "ns": 500}
    assert first["batch_stats"] == [{"batch_size": 1, "compute_infer": {"count": 5, "ns": 50}}]
    assert second == {"name": "m", "version": "2", "inference_count": "4"}


def test_resolve_endpoints_lists_every_address_of_a_name_with_its_scheme_and_port():
    resolved = resolve_endpoints("grpc://localhost:8001")
    assert "grpc://127.0.0.1:8001" in resolved
    assert len(resolved) == len(set(resolved))
    assert resolve_endpoints("127.0.0.1:9") == ("127.0.0.1:9",)
    with pytest.raises(ConfigError, match="port"):
        resolve_endpoints("localhost")
    with pytest.raises(ServerUnreachableError, match="cannot resolve"):
        resolve_endpoints("a..b:8001")  # refused before any DNS query
