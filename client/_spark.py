"""The Spark side of bulk scoring: the session, a task's failure as seen by the driver, progress.

Example:
    >>> session = spark_session("local[2]")                              # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from detstack import errors as detstack_errors
from detstack.errors import ConfigError, DetstackError, InferenceError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["INSTALL_HINT", "SparkProgress", "active_session", "spark_session", "task_failure"]

INSTALL_HINT = "install the Spark extra: pip install 'detstack[spark]' (and a Java 17+ runtime)"


def spark_session(master: str | None = None, conf: dict[str, str] | None = None) -> SparkSession:
    """The active Spark session, or a new one on ``master`` (default ``local[*]``).

    In local mode the Python workers run this interpreter (``PYSPARK_PYTHON``, unless set), so
    they import the same detstack and packages.

    Raises:
        ConfigError: pyspark is not installed, or Spark could not start (no Java runtime).
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise ConfigError(f"bulk scoring needs pyspark: {INSTALL_HINT}") from None
    master = master or "local[*]"
    if master.startswith("local"):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.master(master)
        .appName("detstack-score")
        .config("spark.ui.showConsoleProgress", "false")
    )
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    try:
        session = builder.getOrCreate()
    except Exception as error:  # py4j/pyspark raise several types; all mean "no Spark"
        raise ConfigError(
            f"Spark could not start on master {master!r}: {str(error).splitlines()[0]} "
            f"(is Java 17+ installed? `java -version`; {INSTALL_HINT})"
        ) from None
    return session


_ERROR_LINE = re.compile(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception)): (.+)$")


def task_failure(error: Exception) -> DetstackError:
    """The detstack error a Spark task raised, from the failure Spark reports to the driver."""
    lines = [line.strip() for line in str(error).splitlines()]
    for line in reversed(lines):
        match = _ERROR_LINE.match(line)
        if match:
            kind = getattr(detstack_errors, match.group(1), None)
            if isinstance(kind, type) and issubclass(kind, DetstackError):
                return kind(f"a scoring task failed: {match.group(2)}")
    first = next((line for line in lines if line), type(error).__name__)
    return InferenceError(f"a scoring task failed: {first[:500]}")


class SparkProgress(threading.Thread):
    """Poll Spark's status tracker and report finished tasks of a job group."""

    def __init__(
        self, session: SparkSession, group: str, total: int, report: Callable[[int, int], None]
    ) -> None:
        super().__init__(name="detstack-score-progress", daemon=True)
        self._tracker = session.sparkContext.statusTracker()
        self._group, self._total, self._report = group, total, report
        self._halt = threading.Event()
        self._done = -1

    def run(self) -> None:
        while not self._halt.wait(0.5):
            self.poll()

    def poll(self) -> None:
        done = 0
        for job in self._tracker.getJobIdsForGroup(self._group):
            info = self._tracker.getJobInfo(job)
            for stage in info.stageIds if info else ():
                stage_info = self._tracker.getStageInfo(stage)
                done += stage_info.numCompletedTasks if stage_info else 0
        if done != self._done:
            self._done = done
            self._report(min(done, self._total), self._total)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def active_session() -> SparkSession | None:
    """The running Spark session, or ``None`` (also when pyspark is not installed)."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        return None
    return SparkSession.getActiveSession()
