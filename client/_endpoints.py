"""Several Triton endpoints behind one client: least outstanding requests, ejection, probing.

:class:`EndpointPool` holds one transport per endpoint and, under one lock, what routing needs:
whether the endpoint is healthy, how many requests it has in flight, and when it may be probed
again. It has no thread of its own; everything happens on the threads that send requests:

* **Routing.** A request goes to the healthy endpoint with the fewest requests in flight (ties
  in turn, so one caller at a time still spreads its requests). Least outstanding requests, not
  round robin: a slower or busier server gets fewer requests by itself.
* **Ejection.** A transient failure (connection refused or reset, HTTP 503, gRPC UNAVAILABLE, a
  model without a loaded version: what :mod:`client._transport` flags as worth retrying) takes
  the endpoint out at once. Timeouts and rejected requests do not: they are not the server
  being gone.
* **Probing back in.** When a request is about to be routed and an ejected endpoint's back-off
  has passed, that request's thread first asks the endpoint whether it and the model are ready
  (two cheap readiness calls); ready puts it back, not ready doubles its back-off
  (``probe_backoff`` up to ``probe_backoff_max``). One thread probes an endpoint at a time.
* **Failing over.** :meth:`EndpointPool.call` retries a transient failure on another healthy
  endpoint at once, and waits (exponential backoff) only when none is left, within the same
  per-request retry budget. When nothing is healthy, the request goes to the ejected endpoint
  whose back-off ends first, so a client of one endpoint retries exactly as before.

Outcomes of requests sent before the endpoint last changed state are counted but do not change
it: a late failure from a server that has since been probed back in does not take it out
again.

Example:
    >>> pool = EndpointPool([("grpc://a:8001", transport_a), ("grpc://b:8001", transport_b)])
    >>> outputs, attempts = pool.call(lambda t: t.infer(payload), retries=4, backoff=0.25)
    ...                                                                  # doctest: +SKIP
    >>> [(s.url, s.healthy, s.sent) for s in pool.stats()]              # doctest: +SKIP
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TypeVar

from client._transport import TransportError, _Transport
from detstack.errors import (
    BadInputError,
    ConfigError,
    InferenceError,
    ModelNotReadyError,
    ServerUnreachableError,
    UnauthorizedError,
)

__all__ = ["EndpointPool", "EndpointStats"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Longest wait between two retries of one request, whatever the backoff doubling says.
_MAX_RETRY_DELAY_S = 5.0


@dataclass(frozen=True)
class EndpointStats:
    """What one endpoint did so far (a snapshot; counts are cumulative).

    Attributes:
        url: ``protocol://host:port``.
        healthy: whether requests are routed to it now.
        outstanding: requests in flight on it now.
        sent: requests sent to it (every attempt counts, readiness probes do not).
        succeeded: requests it answered.
        failures: requests that failed on it, for any reason (a rejected image included).
        ejections: times it was taken out.
        probes: readiness probes made while it was out.
        last_error: why it was last taken out or last failed a probe (``""``: never).
    """

    url: str
    healthy: bool
    outstanding: int
    sent: int
    succeeded: int
    failures: int
    ejections: int
    probes: int
    last_error: str


class _Endpoint:
    """The mutable state of one endpoint (only touched under the pool's lock)."""

    def __init__(self, index: int, url: str, transport: _Transport) -> None:
        self.index = index
        self.url = url
        self.transport = transport
        self.healthy = True
        self.outstanding = 0
        self.sent = 0
        self.succeeded = 0
        self.failures = 0
        self.ejections = 0
        self.probes = 0
        self.strikes = 0  # failed probes since it was taken out: the back-off's exponent
        self.retry_at = 0.0  # monotonic time from which it may be probed
        self.probing = False
        self.generation = 0  # bumped at every change of health
        self.last_error = ""


@dataclass(frozen=True)
class _Lease:
    endpoint: _Endpoint
    generation: int


class EndpointPool:
    """One transport per endpoint, and the routing state of each (thread-safe).

    Args:
        endpoints: ``(url, transport)`` pairs, in the order the user gave them; the pool owns
            the transports and closes them.
        probe_backoff: seconds an ejected endpoint waits before its first readiness probe.
        probe_backoff_max: longest wait between two probes (the wait doubles per failed probe).
        clock: monotonic seconds (tests pass a fake).
    """

    def __init__(
        self,
        endpoints: Sequence[tuple[str, _Transport]],
        *,
        probe_backoff: float = 0.5,
        probe_backoff_max: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not endpoints:
            raise ConfigError("an endpoint pool needs at least one endpoint, got none")
        if not 0 < probe_backoff <= probe_backoff_max:
            raise ConfigError(
                "probe back-off must satisfy 0 < probe_backoff <= probe_backoff_max, got "
                f"{probe_backoff!r} and {probe_backoff_max!r}"
            )
        self._endpoints = [_Endpoint(i, url, t) for i, (url, t) in enumerate(endpoints)]
        self._probe_backoff = probe_backoff
        self._probe_backoff_max = probe_backoff_max
        self._clock = clock
        self._lock = threading.Lock()
        self._turn = 0  # where the tie-break among equally loaded endpoints starts

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(e.url for e in self._endpoints)

    def __len__(self) -> int:
        return len(self._endpoints)

    # --- routing ----------------------------------------------------------------------

    def _acquire(self, avoid: Collection[int] = ()) -> _Lease:
        """Pick the endpoint for one request (probing a due one first) and count it in flight."""
        due = self._claim_probe()
        if due is not None:
            self._probe(due)
        with self._lock:
            endpoint = self._choose(avoid)
            endpoint.outstanding += 1
            endpoint.sent += 1
            return _Lease(endpoint, endpoint.generation)

    def _choose(self, avoid: Collection[int]) -> _Endpoint:
        count = len(self._endpoints)

        def rank(position: int) -> tuple[bool, bool, float, int]:
            endpoint = self._endpoints[(self._turn + position) % count]
            load = endpoint.outstanding if endpoint.healthy else endpoint.retry_at
            return (endpoint.index in avoid, not endpoint.healthy, load, position)

        best = min(range(count), key=rank)
        chosen = self._endpoints[(self._turn + best) % count]
        self._turn = (chosen.index + 1) % count
        return chosen

    def _claim_probe(self) -> _Endpoint | None:
        now = self._clock()
        with self._lock:
            for endpoint in self._endpoints:
                if not endpoint.healthy and not endpoint.probing and endpoint.retry_at <= now:
                    endpoint.probing = True
                    return endpoint
        return None

    def _probe(self, endpoint: _Endpoint) -> None:
        """Ask an ejected endpoint whether it is back (on the calling thread)."""
        ready, reason = False, "not ready"
        try:
            ready = endpoint.transport.server_ready() and endpoint.transport.model_ready()
        except TransportError as error:
            reason = str(error.error)
        finally:
            with self._lock:
                endpoint.probing = False
                endpoint.probes += 1
                if ready and not endpoint.healthy:
                    self._readmit(endpoint, "its readiness probe passed")
                elif not endpoint.healthy:  # (healthy: a request sent meanwhile succeeded)
                    endpoint.strikes += 1
                    endpoint.last_error = reason
                    endpoint.retry_at = self._clock() + self._backoff(endpoint.strikes)

    def _backoff(self, strikes: int) -> float:
        return min(self._probe_backoff_max, self._probe_backoff * 2**strikes)

    def _readmit(self, endpoint: _Endpoint, why: str) -> None:
        endpoint.healthy = True
        endpoint.strikes = 0
        endpoint.generation += 1
        logger.info("endpoint %s is back in: %s", endpoint.url, why)

    def _eject(self, endpoint: _Endpoint, reason: str) -> None:
        endpoint.last_error = reason
        if not endpoint.healthy:
            return
        endpoint.healthy = False
        endpoint.ejections += 1
        endpoint.generation += 1
        delay = self._backoff(endpoint.strikes)
        endpoint.retry_at = self._clock() + delay
        if len(self._endpoints) > 1:
            logger.warning(
                "endpoint %s taken out (%s); probing it again in %.1f s",
                endpoint.url,
                reason,
                delay,
            )

    def _release(self, lease: _Lease, error: TransportError | None, *, aborted: bool) -> None:
        endpoint = lease.endpoint
        with self._lock:
            endpoint.outstanding -= 1
            if aborted:
                return
            current = lease.generation == endpoint.generation
            if error is None:
                endpoint.succeeded += 1
                if current and not endpoint.healthy:
                    self._readmit(endpoint, "it answered a request")
                return
            endpoint.failures += 1
            if error.transient and current:
                self._eject(endpoint, str(error.error))

    def _has_healthy(self, avoid: Collection[int]) -> bool:
        with self._lock:
            return any(e.healthy and e.index not in avoid for e in self._endpoints)

    # --- calls ------------------------------------------------------------------------

    def call(
        self,
        function: Callable[[_Transport], T],
        *,
        retries: int,
        backoff: float,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
        log: logging.Logger = logger,
    ) -> tuple[T, int]:
        """Run ``function(transport)`` on the best endpoint, failing over and retrying.

        A transient failure is tried again on another healthy endpoint at once; when none is
        left, after a backoff of ``backoff * 2**n`` s (n: waits so far, capped at 5 s, with
        ±20 % jitter so clients do not retry in lockstep). At most ``retries`` extra attempts.
        Retries are logged at INFO on ``log`` (the client passes its own logger, so they are
        where a user of one server always found them).

        Returns:
            ``(result, attempts)``.

        Raises:
            InferenceError: the typed error of the last attempt; when every endpoint of a pool
                of several is out, one error of the same type naming each and its reason.
        """
        attempt = 0
        waits = 0
        tried: set[int] = set()
        while True:
            attempt += 1
            lease = self._acquire(tried)
            try:
                result = function(lease.endpoint.transport)
            except TransportError as error:
                self._release(lease, error, aborted=False)
                if not error.transient or attempt > retries:
                    raise self._final_error(error.error) from None
                tried.add(lease.endpoint.index)
                if self._has_healthy(tried):
                    log.info(
                        "%s; trying another endpoint (retry %d/%d)", error.error, attempt, retries
                    )
                    continue
                delay = min(_MAX_RETRY_DELAY_S, backoff * 2**waits) * (0.8 + 0.4 * jitter())
                waits += 1
                tried.clear()
                log.info("%s; retry %d/%d in %.2f s", error.error, attempt, retries, delay)
                sleep(delay)
                continue
            except BaseException:
                self._release(lease, None, aborted=True)
                raise
            self._release(lease, None, aborted=False)
            return result, attempt

    def _final_error(self, error: InferenceError) -> InferenceError:
        """``error``, or, when every endpoint of several is out, one error naming them all."""
        if len(self._endpoints) == 1:
            return error
        with self._lock:
            if any(e.healthy for e in self._endpoints):
                return error
            reasons = "; ".join(f"{e.url}: {e.last_error or 'not ready'}" for e in self._endpoints)
        return type(error)(f"all {len(self._endpoints)} endpoints are out of service ({reasons})")

    def each(self, function: Callable[[_Transport], T]) -> list[tuple[str, T | TransportError]]:
        """``function(transport)`` once on every endpoint, in order: its result or its error.

        Does not route, retry or change any endpoint's health (for statistics).
        """
        results: list[tuple[str, T | TransportError]] = []
        for endpoint in self._endpoints:
            try:
                results.append((endpoint.url, function(endpoint.transport)))
            except TransportError as error:
                results.append((endpoint.url, error))
        return results

    def check_ready(self) -> list[tuple[str, InferenceError | None]]:
        """Ask every endpoint whether it and the model are ready; update their health.

        Returns:
            ``(url, None)`` for a ready endpoint, ``(url, why not)`` for the others; ready ones
            are routed to, the others are taken out (and probed back in later).

        Raises:
            UnauthorizedError, BadInputError: an endpoint refused the token or the request:
                waiting will not help.
        """
        answers: list[tuple[str, InferenceError | None]] = []
        for endpoint in self._endpoints:
            problem: InferenceError | None = None
            try:
                if not endpoint.transport.server_ready():
                    problem = ServerUnreachableError(f"{endpoint.url} is not ready")
                elif not endpoint.transport.model_ready():
                    problem = ModelNotReadyError(
                        f"model {endpoint.transport.settings.model!r} is not ready on "
                        f"{endpoint.url}"
                    )
            except TransportError as error:
                if isinstance(error.error, UnauthorizedError | BadInputError):
                    raise error.error from None
                problem = error.error
            with self._lock:
                if problem is None and not endpoint.healthy:
                    self._readmit(endpoint, "it is ready")
                elif problem is not None:
                    self._eject(endpoint, str(problem))
            answers.append((endpoint.url, problem))
        return answers

    # --- state --------------------------------------------------------------------------

    def stats(self) -> tuple[EndpointStats, ...]:
        """A snapshot of every endpoint's counts, in the order the endpoints were given."""
        with self._lock:
            return tuple(
                EndpointStats(
                    url=e.url,
                    healthy=e.healthy,
                    outstanding=e.outstanding,
                    sent=e.sent,
                    succeeded=e.succeeded,
                    failures=e.failures,
                    ejections=e.ejections,
                    probes=e.probes,
                    last_error=e.last_error,
                )
                for e in self._endpoints
            )

    def close(self) -> None:
        """Close every transport (each close is attempted even if one fails)."""
        errors = []
        for endpoint in self._endpoints:
            try:
                endpoint.transport.close()
            except Exception as error:  # close the others anyway
                errors.append(error)
        if errors:
            raise errors[0]
