"""Run the pipeline: data check → train → evaluate → export → serve → predict → bench → report.

Each stage is a function of the run's fixed :class:`~pipeline._state.RunContext` and of the
earlier stages' values it needs, and returns a typed result whose entries the runner records in
``run.json``; the runner times it, logs it, and stops at the first failure with a
:class:`~detstack.errors.PipelineError` naming the stage. Nothing earlier is lost on
failure: the run folder keeps the logs, the dataset report and the checkpoints, and the report
is written with the stages that did run; export writes a version atomically, so existing
versions are never touched and a failed export leaves none behind.

Run folder (``<runs>/<UTC timestamp>/``)::

    pipeline.yaml       the effective configuration (re-run it: detstack pipeline --config ...)
    run.json            status, timings and results of every stage (rewritten after each stage)
    pipeline.log        the run's log
    data_report.txt     the dataset check
    train/              checkpoints and metrics.jsonl
    predictions/        annotated images and detections.json from the served model
    bench/              the benchmark's JSON/CSV
    report.md, report.html

Example:
    >>> result = run_pipeline(load_pipeline_config(None))         # doctest: +SKIP
    >>> result.report_html                                         # doctest: +SKIP
    PosixPath('runs/20260101-120000/report.html')
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from detstack.atomic import atomic_write_json
from detstack.errors import DetstackError, PipelineError
from detstack.tokens import TOKEN_ENV
from pipeline._config import PipelineConfig, config_to_yaml
from pipeline._report import write_report
from pipeline._state import CONFIG_FILE_NAME, RunContext, StageResult

if TYPE_CHECKING:  # loaded at run time inside run_pipeline (torch, tritonclient)
    from serve import ApiToken, TritonServer

__all__ = ["PipelineResult", "run_pipeline"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class PipelineResult:
    """Where a finished run put things."""

    run_dir: Path
    report_markdown: Path
    report_html: Path
    model_version: int | None
    version_dir: Path | None
    record: dict[str, Any] = field(repr=False)  # run.json: JSON data


class _Recorder:
    """``run.json`` of one run: what each stage added, saved after every change."""

    def __init__(self, run_dir: Path, record: dict[str, Any]) -> None:
        self.run_dir = run_dir
        self.record = record

    def save(self) -> None:
        atomic_write_json(self.run_dir / "run.json", self.record, default=str)

    def add(self, entries: Mapping[str, object]) -> None:
        for key, value in entries.items():
            existing = self.record.get(key)
            if isinstance(existing, dict) and isinstance(value, Mapping):
                existing.update(value)
            else:
                self.record[key] = value


def _new_run_dir(runs: Path, explicit: Path | None) -> Path:
    if explicit is not None:
        if explicit.exists() and any(explicit.iterdir()):
            raise PipelineError(
                f"run folder {explicit} already exists and is not empty; choose a new --run-dir"
            )
        explicit.mkdir(parents=True, exist_ok=True)
        return explicit
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    runs.mkdir(parents=True, exist_ok=True)
    for suffix in ("", *(f"-{i}" for i in range(1, 100))):
        candidate = runs / f"{stamp}{suffix}"
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise PipelineError(f"cannot create a new run folder under {runs}")


@contextlib.contextmanager
def _log_to(path: Path) -> Iterator[None]:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    )
    root = logging.getLogger()
    previous = root.level
    # The log file always gets INFO; the terminal keeps the level the user chose (-q, -v).
    quieted = [h for h in root.handlers if h.level == logging.NOTSET]
    for existing in quieted:
        existing.setLevel(previous)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        for existing in quieted:
            existing.setLevel(logging.NOTSET)
        handler.close()


def run_pipeline(
    config: PipelineConfig,
    *,
    token: ApiToken | None = None,
    run_dir: Path | None = None,
    progress: bool = False,
    while_serving: Callable[[TritonServer, PipelineResult], None] | None = None,
) -> PipelineResult:
    """Run every stage; return where the report and the new model version are.

    Args:
        config: the effective configuration (saved into the run folder and the version).
        token: the API token the run's Triton requires; ``None`` makes a one-time random token
            for the run's own server. Never saved.
        run_dir: an explicit, new or empty run folder (default: ``<runs>/<UTC timestamp>``).
        progress: show progress bars.
        while_serving: called with the running server and the result after the report is
            written, before the server stops (``--keep-serving`` waits in it for Ctrl-C).

    Raises:
        PipelineError: a stage failed; the message names it, the run folder keeps the rest.
    """
    from pipeline import _stages as stages  # torch and tritonclient: only when a run starts

    run_path = _new_run_dir(Path(config.runs), run_dir)
    if token is None:
        token = stages.one_time_token(secrets.token_urlsafe(24))
    run = RunContext(config=config, run_dir=run_path, token=token, progress=progress)
    run.config_file.write_text(
        config_to_yaml(config, header=_config_header(run_path)), encoding="utf-8"
    )
    recorder = _Recorder(
        run_path,
        {
            "run_id": run_path.name,
            "run_dir": str(run_path),
            "status": "running",
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "model_name": config.name,
            "repository": config.repository,
            "dataset": config.dataset.source,
            "stages": [],
        },
    )
    recorder.save()
    started = time.perf_counter()

    def stage(name: str, work: Callable[[], StageResult[T]]) -> T:
        return _run_stage(recorder, run, name, work, started)

    with _log_to(run_path / "pipeline.log"), contextlib.ExitStack() as stack:
        logger.info("pipeline run %s: %s", run_path.name, run_path)
        dataset = stage("data", lambda: stages.check_data(run))
        checkpoint = stage("train", lambda: stages.train_model(run))
        stage("evaluate", lambda: stages.evaluate_model(checkpoint))
        stage("export", lambda: stages.export_model(run, checkpoint))
        server = stage("serve", lambda: stages.start_server(run, stack))
        stage("predict", lambda: stages.smoke_predict(run, server, dataset))
        stage("accuracy", lambda: stages.served_accuracy(run, server, checkpoint))
        stage("bench", lambda: stages.benchmark(run, server, checkpoint))
        record = recorder.record
        record["status"] = "succeeded"
        record["seconds"] = round(time.perf_counter() - started, 1)
        record["next_steps"] = stages.next_steps(run)
        recorder.save()
        result = _finish(recorder)
        logger.info("pipeline run %s succeeded in %.0f s", run_path.name, record["seconds"])
        if while_serving is not None:
            while_serving(server, result)
    return result


def _finish(recorder: _Recorder) -> PipelineResult:
    markdown, html = write_report(recorder.record, recorder.run_dir)
    version = recorder.record.get("model_version")
    version_dir = recorder.record.get("version_dir")
    return PipelineResult(
        run_dir=recorder.run_dir,
        report_markdown=markdown,
        report_html=html,
        model_version=int(version) if version is not None else None,
        version_dir=Path(version_dir) if version_dir else None,
        record=recorder.record,
    )


def _run_stage(
    recorder: _Recorder,
    run: RunContext,
    name: str,
    work: Callable[[], StageResult[T]],
    started: float,
) -> T:
    """Run one stage, record its outcome; on failure record why and raise PipelineError."""
    record = recorder.record
    entry: dict[str, Any] = {"name": name, "status": "running"}
    record["stages"].append(entry)
    recorder.save()
    logger.info("stage %s: starting", name)
    stage_started = time.perf_counter()
    try:
        result = work()
    except BaseException as error:
        interrupted = isinstance(error, KeyboardInterrupt)
        entry["status"] = "interrupted" if interrupted else "failed"
        entry["seconds"] = round(time.perf_counter() - stage_started, 1)
        message = (
            str(error) if isinstance(error, DetstackError) else f"{type(error).__name__}: {error}"
        )
        entry["note"] = message
        record["status"] = "interrupted" if interrupted else "failed"
        record["failed_stage"] = name
        record["error"] = message
        record["seconds"] = round(time.perf_counter() - started, 1)
        recorder.save()
        with contextlib.suppress(Exception):
            write_report(record, recorder.run_dir)
        if interrupted:
            raise
        if not isinstance(error, DetstackError):
            logger.exception("stage %s failed unexpectedly", name)
        else:
            logger.error("stage %s failed: %s", name, message)
        version = record.get("model_version")
        versions = (
            f"  version {version} was exported before the failure: {record['version_dir']}"
            if version is not None
            else f"  no model version was written; existing versions in "
            f"{run.config.repository} are unchanged"
        )
        raise PipelineError(
            f"stage '{name}' failed: {message}\n"
            f"  run folder (logs, report, earlier outputs): {recorder.run_dir}\n{versions}"
        ) from error
    recorder.add(result.record)
    entry["status"] = "done"
    entry["seconds"] = round(time.perf_counter() - stage_started, 1)
    entry["note"] = result.note
    recorder.save()
    logger.info("stage %s: done in %.1f s (%s)", name, entry["seconds"], result.note)
    return result.value


def _config_header(run_dir: Path) -> str:
    return (
        f"detstack pipeline configuration used by run {run_dir.name}.\n"
        "Re-run it (trains again and adds the next model version):\n"
        f"  detstack pipeline --config {run_dir / CONFIG_FILE_NAME}\n"
        f"The API token is never stored here: pass --token or set {TOKEN_ENV}."
    )
