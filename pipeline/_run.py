"""Run the pipeline: data check → train → evaluate → export → serve → predict → bench → report.

Each stage is a function of a shared :class:`_Run` (config, run folder, what earlier stages
produced) that records its results in ``run.json``; the runner times it, logs it, and stops at
the first failure with a :class:`~detstack.errors.PipelineError` naming the stage. Nothing
earlier is lost on failure: the run folder keeps the logs, the dataset report, the checkpoints,
and the report is written with the stages that did run; export writes a version atomically, so
existing versions are never touched and a failed export leaves none behind.

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
import json
import logging
import os
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detstack.errors import DetstackError, PipelineError
from pipeline._config import PipelineConfig, config_to_yaml
from pipeline._report import write_report

__all__ = ["PipelineResult", "run_pipeline"]

logger = logging.getLogger(__name__)

#: The file name of the configuration saved in the run folder and in the model version.
CONFIG_FILE_NAME = "pipeline.yaml"


@dataclass(frozen=True)
class PipelineResult:
    """Where a finished run put things."""

    run_dir: Path
    report_markdown: Path
    report_html: Path
    model_version: int | None
    version_dir: Path | None
    record: dict[str, Any] = field(repr=False)


@dataclass
class _Run:
    """Mutable state of one run, owned by :func:`run_pipeline` (never shared across runs)."""

    config: PipelineConfig
    run_dir: Path
    token: Any  # serve.ApiToken | None; never written anywhere
    record: dict[str, Any]
    progress: bool
    dataset: Any = None
    val_dataset: Any = None
    checkpoint: Path | None = None
    export_result: Any = None
    server: Any = None
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def save(self) -> None:
        _write_json_atomic(self.run_dir / "run.json", self.record)


def _write_json_atomic(path: Path, data: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, default=str)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


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
    token: Any = None,
    run_dir: Path | None = None,
    progress: bool = False,
    while_serving: Callable[[Any, PipelineResult], None] | None = None,
) -> PipelineResult:
    """Run every stage; return where the report and the new model version are.

    Args:
        config: the effective configuration (saved into the run folder and the version).
        token: the API token (``serve.ApiToken``) the run's Triton requires; ``None`` makes a
            one-time random token for the run's own server. Never saved.
        run_dir: an explicit, new or empty run folder (default: ``<runs>/<UTC timestamp>``).
        progress: show progress bars.
        while_serving: called with the running server and the result after the report is
            written, before the server stops (``--keep-serving`` waits in it for Ctrl-C).

    Raises:
        PipelineError: a stage failed; the message names it, the run folder keeps the rest.
    """
    from pipeline import _stages as stages

    run_path = _new_run_dir(Path(config.runs), run_dir)
    if token is None:
        token = stages.one_time_token(secrets.token_urlsafe(24))
    (run_path / CONFIG_FILE_NAME).write_text(
        config_to_yaml(config, header=_config_header(run_path)), encoding="utf-8"
    )
    record: dict[str, Any] = {
        "run_id": run_path.name,
        "run_dir": str(run_path),
        "status": "running",
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model_name": config.name,
        "repository": config.repository,
        "dataset": config.dataset.source,
        "stages": [],
    }
    run = _Run(config=config, run_dir=run_path, token=token, record=record, progress=progress)
    run.save()
    started = time.perf_counter()
    plan: list[tuple[str, Callable[[_Run], str]]] = [
        ("data", stages.check_data),
        ("train", stages.train_model),
        ("evaluate", stages.evaluate_model),
        ("export", stages.export_model),
        ("serve", stages.start_server),
        ("predict", stages.smoke_predict),
        ("accuracy", stages.served_accuracy),
        ("bench", stages.benchmark),
    ]
    with _log_to(run_path / "pipeline.log"), run.stack:
        logger.info("pipeline run %s: %s", run_path.name, run_path)
        for name, stage in plan:
            _run_stage(run, name, stage, started)
        record["status"] = "succeeded"
        record["seconds"] = round(time.perf_counter() - started, 1)
        record["next_steps"] = stages.next_steps(run)
        run.save()
        result = _finish(run)
        logger.info("pipeline run %s succeeded in %.0f s", run_path.name, record["seconds"])
        if while_serving is not None:
            while_serving(run.server, result)
    return result


def _finish(run: _Run) -> PipelineResult:
    markdown, html = write_report(run.record, run.run_dir)
    version = run.record.get("model_version")
    version_dir = run.record.get("version_dir")
    return PipelineResult(
        run_dir=run.run_dir,
        report_markdown=markdown,
        report_html=html,
        model_version=int(version) if version is not None else None,
        version_dir=Path(version_dir) if version_dir else None,
        record=run.record,
    )


def _run_stage(run: _Run, name: str, stage: Callable[[_Run], str], started: float) -> None:
    entry: dict[str, Any] = {"name": name, "status": "running"}
    run.record["stages"].append(entry)
    run.save()
    logger.info("stage %s: starting", name)
    stage_started = time.perf_counter()
    try:
        note = stage(run)
    except BaseException as error:
        interrupted = isinstance(error, KeyboardInterrupt)
        entry["status"] = "interrupted" if interrupted else "failed"
        entry["seconds"] = round(time.perf_counter() - stage_started, 1)
        message = (
            str(error) if isinstance(error, DetstackError) else f"{type(error).__name__}: {error}"
        )
        entry["note"] = message
        run.record["status"] = "interrupted" if interrupted else "failed"
        run.record["failed_stage"] = name
        run.record["error"] = message
        run.record["seconds"] = round(time.perf_counter() - started, 1)
        run.save()
        with contextlib.suppress(Exception):
            write_report(run.record, run.run_dir)
        if interrupted:
            raise
        if not isinstance(error, DetstackError):
            logger.exception("stage %s failed unexpectedly", name)
        else:
            logger.error("stage %s failed: %s", name, message)
        version = run.record.get("model_version")
        versions = (
            f"  version {version} was exported before the failure: {run.record['version_dir']}"
            if version is not None
            else f"  no model version was written; existing versions in "
            f"{run.config.repository} are unchanged"
        )
        raise PipelineError(
            f"stage '{name}' failed: {message}\n"
            f"  run folder (logs, report, earlier outputs): {run.run_dir}\n{versions}"
        ) from error
    entry["status"] = "done"
    entry["seconds"] = round(time.perf_counter() - stage_started, 1)
    entry["note"] = note
    run.save()
    logger.info("stage %s: done in %.1f s (%s)", name, entry["seconds"], note)


def _config_header(run_dir: Path) -> str:
    return (
        f"detstack pipeline configuration used by run {run_dir.name}.\n"
        "Re-run it (trains again and adds the next model version):\n"
        f"  detstack pipeline --config {run_dir / CONFIG_FILE_NAME}\n"
        "The API token is never stored here: pass --token or set DETSTACK_API_TOKEN."
    )
