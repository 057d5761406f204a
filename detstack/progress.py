"""Progress reporting that behaves on a terminal and in a log file alike.

tqdm redraws its bar with ``\\r`` frames several times a second. That is right on a terminal
and wrong everywhere else: a CI log, a ``tee``'d file or a pipe fills with thousands of
half-lines. :func:`progress` picks by where the output goes:

* the stream is a terminal: a tqdm bar (``leave=False``, so finished bars do not pile up);
* it is not (a log file, CI, a pipe): plain lines, no ``\\r`` at all. One line each time the
  count crosses another ``percent_step`` % of the total (default 10 %) or ``interval_s`` seconds
  (default 30 s) after the last line, whichever comes first; with an unknown total, one every
  ``interval_s`` seconds. Two lines are never closer than ``min_interval_s`` (default 1 s), so a
  loop that is over in a moment writes only its final line. The final line gives the count, the
  elapsed time and the rate (or says where it stopped, when the work ended before the total).

The environment variable ``DETSTACK_PROGRESS`` overrides that choice for every call that does
not pass ``mode``: ``auto`` (the default: by the stream), ``bar`` (always tqdm), ``lines``
(always plain lines) or ``off`` (nothing). Output goes to ``sys.stderr`` (looked up at each
call) unless ``stream`` says otherwise. There is no module-level state: each call reads the
environment once and owns its counters.

Example::

    from detstack.progress import progress

    for image in progress(images, desc="decoding images", unit="img", enabled=show):
        ...

    with progress(total=size, desc=name, unit="B", unit_scale=True) as bar:
        for chunk in chunks:
            bar.update(len(chunk))
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, Generic, Literal, TextIO, TypeVar

from detstack.errors import ConfigError

__all__ = ["ENV_VAR", "MODES", "Progress", "progress"]

ENV_VAR = "DETSTACK_PROGRESS"
MODES = ("auto", "bar", "lines", "off")

Mode = Literal["auto", "bar", "lines", "off"]
T = TypeVar("T")


def progress(
    iterable: Iterable[T] | None = None,
    *,
    total: int | None = None,
    desc: str,
    unit: str = "it",
    unit_scale: bool = False,
    stream: TextIO | None = None,
    enabled: bool = True,
    mode: Mode | None = None,
    percent_step: float = 10.0,
    interval_s: float = 30.0,
    min_interval_s: float = 1.0,
) -> Progress[T]:
    """Wrap ``iterable`` (or count ``.update(n)`` calls) with a bar or log lines.

    Args:
        iterable: what to iterate; ``None`` for the ``with ... as bar: bar.update(n)`` style.
        total: the expected count (default ``len(iterable)`` when it has one).
        desc: what is being done, the start of every line ("decoding images").
        unit: the name of one item ("img", "B", "req").
        unit_scale: print counts with k/M/G/T prefixes (for bytes).
        stream: where to write (default ``sys.stderr`` at the time of the call).
        enabled: ``False`` is the same as ``mode="off"`` (e.g. ``enabled=rank == 0``).
        mode: ``auto``, ``bar``, ``lines`` or ``off``; default ``$DETSTACK_PROGRESS`` or
            ``auto``.
        percent_step: lines mode: a line each time this many more percent are done.
        interval_s: lines mode: a line at least this often (seconds) while work goes on.
        min_interval_s: lines mode: the shortest gap between two lines before the final one.

    Returns:
        A :class:`Progress`: iterate it, or use it as a context manager and call ``update``.

    Raises:
        ConfigError: ``mode`` or ``$DETSTACK_PROGRESS`` is not one of :data:`MODES`, or
            ``percent_step`` / ``interval_s`` is not positive, or ``min_interval_s`` is negative.
    """
    target = stream if stream is not None else sys.stderr
    chosen = _resolve_mode(mode) if enabled else "off"
    if chosen == "auto":
        chosen = "bar" if _is_terminal(target) else "lines"
    if not percent_step > 0 or not interval_s > 0 or not min_interval_s >= 0:
        raise ConfigError(
            f"progress needs percent_step > 0, interval_s > 0 and min_interval_s >= 0; got "
            f"{percent_step!r}, {interval_s!r} and {min_interval_s!r}"
        )
    if total is None and iterable is not None:
        total = _length(iterable)
    return Progress(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=unit_scale,
        stream=target,
        mode=chosen,
        percent_step=percent_step,
        interval_s=interval_s,
        min_interval_s=min_interval_s,
    )


class Progress(Generic[T]):
    """One progress report: a tqdm bar, plain log lines, or nothing (see :func:`progress`).

    Iterating it yields the wrapped items and counts them; ``update(n)`` counts by hand.
    ``close()`` (called by ``with``, and when iteration ends) ends the bar or writes the final
    line; it is idempotent. ``update`` may be called from several threads.
    """

    def __init__(
        self,
        iterable: Iterable[T] | None,
        *,
        total: int | None,
        desc: str,
        unit: str,
        unit_scale: bool,
        stream: TextIO,
        mode: Literal["bar", "lines", "off"],
        percent_step: float,
        interval_s: float,
        min_interval_s: float,
    ) -> None:
        self._iterable = iterable
        self.total = total
        self.desc = desc
        self.unit = unit
        self.mode = mode
        self._unit_scale = unit_scale
        self._stream = stream
        self._percent_step = percent_step
        self._interval_s = interval_s
        self._min_interval_s = min_interval_s
        self._count = 0
        self._postfix = ""
        self._closed = False
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._last_line = self._start
        self._next_percent = percent_step
        self._bar: Any = None
        if mode == "bar":
            from tqdm import tqdm  # the terminal case only: tqdm's import is not free

            self._bar = tqdm(
                total=total,
                desc=desc,
                unit=unit,
                unit_scale=unit_scale,
                file=stream,
                leave=False,
                dynamic_ncols=True,
            )

    @property
    def n(self) -> int:
        """How many items were counted so far."""
        return self._count

    def __iter__(self) -> Iterator[T]:
        if self._iterable is None:
            raise TypeError(f"progress {self.desc!r} wraps no iterable; call update(n) instead")
        try:
            for item in self._iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> Progress[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        """Count ``n`` more items done."""
        if self.mode == "off" or n == 0:
            self._count += n
            return
        with self._lock:
            self._count += n
            if self._bar is not None:
                self._bar.update(n)
                return
            now = time.monotonic()
            gap = now - self._last_line
            if gap >= self._min_interval_s and self._percent_due():
                self._last_line = now
                self._write(self._status_line(now))
            elif gap >= self._interval_s:
                self._last_line = now
                self._write(self._status_line(now))
                self._skip_near_mark()

    def set_postfix(self, **values: object) -> None:
        """Show ``name=value`` pairs after the count (e.g. the current loss)."""
        if self.mode == "off":
            return
        with self._lock:
            if self._bar is not None:
                self._bar.set_postfix(**values)
            else:
                self._postfix = ", ".join(f"{name}={value}" for name, value in values.items())

    def close(self) -> None:
        """End the bar, or write the final line (count, elapsed time, rate)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._bar is not None:
                self._bar.close()
            elif self.mode == "lines":
                self._write(self._final_line(time.monotonic()))

    def _percent_due(self) -> bool:
        """Whether the count crossed the next percent mark below 100 % (moves the mark on)."""
        if not self.total or self._count >= self.total:
            return False
        percent = 100.0 * self._count / self.total
        if percent < self._next_percent:
            return False
        steps = math.floor(percent / self._percent_step) + 1
        self._next_percent = steps * self._percent_step
        return True

    def _skip_near_mark(self) -> None:
        """After a line on time, move the next percent mark at least half a step away.

        Otherwise a line at 39 % (30 s passed) is followed a second later by one at 40 %.
        """
        if not self.total:
            return
        percent = 100.0 * self._count / self.total
        self._next_percent = max(
            self._next_percent,
            math.floor(percent / self._percent_step + 1.5) * self._percent_step,
        )

    def _status_line(self, now: float) -> str:
        elapsed = now - self._start
        if self.total:
            done = f"{self._of_total()} ({100.0 * self._count / self.total:.0f}%)"
        else:
            done = self._counted()
        line = f"{self.desc}: {done}, {_duration(elapsed)}, {self._rate(elapsed)}"
        return f"{line}, {self._postfix}" if self._postfix else line

    def _final_line(self, now: float) -> str:
        elapsed = now - self._start
        took = f"{_duration(elapsed)} ({self._rate(elapsed)})"
        if self.total is not None and self._count < self.total:
            return f"{self.desc}: stopped at {self._of_total()} after {took}"
        return f"{self.desc}: done, {self._counted()} in {took}"

    def _rate(self, elapsed: float) -> str:
        if elapsed <= 0:
            return f"? {self.unit}/s"
        per_second = self._count / elapsed
        if self._unit_scale:
            return f"{_scaled(per_second, self.unit)}/s"
        digits = f"{per_second:.0f}" if per_second >= 1000 else f"{per_second:.3g}"
        return f"{digits} {self.unit}/s"

    def _of_total(self) -> str:
        """``500/10000 img`` (or ``1.2 MB/5.0 MB`` with ``unit_scale``)."""
        if self._unit_scale:
            return f"{_scaled(self._count, self.unit)}/{_scaled(self.total or 0, self.unit)}"
        return f"{self._count}/{self.total} {self.unit}"

    def _counted(self) -> str:
        """``500 img`` (or ``1.2 MB``)."""
        if self._unit_scale:
            return _scaled(self._count, self.unit)
        return f"{self._count} {self.unit}"

    def _write(self, line: str) -> None:
        try:
            self._stream.write(line + "\n")
            self._stream.flush()
        except (OSError, ValueError):
            # A closed or broken log stream must not stop the work it reports on.
            pass


def _resolve_mode(mode: str | None) -> str:
    source = "mode argument"
    if mode is None:
        mode = os.environ.get(ENV_VAR, "").strip().lower() or "auto"
        source = f"${ENV_VAR}"
    if mode not in MODES:
        raise ConfigError(f"{source} must be one of {', '.join(MODES)}; got {mode!r}")
    return mode


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, OSError, ValueError):
        return False


def _length(iterable: Iterable[Any]) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _scaled(value: float, unit: str) -> str:
    """``950 B``, ``1.2 kB``, ``3.4 MB`` ... (decimal prefixes, as tqdm's ``unit_scale``)."""
    if abs(value) < 1000:
        return f"{value:.0f} {unit}"
    for prefix in ("k", "M", "G"):
        value /= 1000
        if abs(value) < 1000:
            return f"{value:.1f} {prefix}{unit}"
    return f"{value / 1000:.1f} T{unit}"
