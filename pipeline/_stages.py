"""The pipeline's stages, one function each, calling every stage package's public API.

Each function takes the run's fixed :class:`~pipeline._state.RunContext` plus the values of
the earlier stages it needs, does one job, and returns a typed
:class:`~pipeline._state.StageResult` (its value, a one-line note for the stage table, and
its ``run.json`` entries). Only :mod:`pipeline._run` imports this module, inside
``run_pipeline``, so ``detstack --help`` does not load torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

from bench import BenchConfig, parse_photo_size, run_benchmark, write_report
from client import DetectionClient
from client.predict_folder import predict_to_folder
from detstack.errors import DatasetError, DetstackError, PipelineError
from detstack.tokens import TOKEN_ENV
from export import export_checkpoint
from export.accuracy_gate import training_split
from pipeline._state import RunContext, StageResult
from serve import ApiToken, TritonServer
from training.checkpoint import load_checkpoint
from training.coco import CocoDataset, format_report, load_dataset, split_dataset
from training.engine import coco_metrics, detections_to_coco, format_metric
from training.synth import SynthConfig, write_synthetic_dataset
from training.train import train

logger = logging.getLogger(__name__)


def one_time_token(value: str) -> ApiToken:
    """Wrap a random token for the run's own server (never shown, never saved)."""
    return ApiToken(value, source="a one-time token of this pipeline run")


# --------------------------------------------------------------------------- data


def check_data(run: RunContext) -> StageResult[CocoDataset]:
    """Load and check the dataset (writing the synthetic one first if asked to)."""
    section = run.config.dataset
    record: dict[str, object] = {}
    source = section.source
    if not source.startswith("s3://") and not Path(source).exists():
        if not section.synthesize:
            raise DatasetError(
                f"dataset {source} does not exist (set dataset.synthesize: true to create the "
                "synthetic shapes dataset there)"
            )
        logger.info("dataset %s is missing: writing the synthetic shapes dataset", source)
        summary = write_synthetic_dataset(
            source,
            SynthConfig(images=section.synth_images, seed=section.synth_seed),
            progress=run.progress,
        )
        record["synthesized"] = {"images": summary.images, "annotations": summary.annotations}
    dataset = load_dataset(source, s3_endpoint_url=section.s3_endpoint_url, progress=run.progress)
    report = dataset.report
    (run.run_dir / "data_report.txt").write_text(format_report(report) + "\n", encoding="utf-8")
    record["data"] = report.to_dict()
    note = (
        f"{report.images} images, {report.training_boxes} boxes, "
        f"{len(report.categories)} categories"
    )
    return StageResult(dataset, note, record)


# --------------------------------------------------------------------------- train


def train_model(run: RunContext) -> StageResult[Path]:
    """Train; the value is the checkpoint export will read (the best one, else the last)."""
    config = run.config
    output_dir = run.run_dir / "train"
    train_config = dataclasses.replace(config.train, output=str(output_dir))
    started = time.perf_counter()
    result = train(train_config, progress=run.progress)
    seconds = time.perf_counter() - started
    checkpoint = Path(result.best_checkpoint or result.last_checkpoint)
    training = {
        "checkpoint": str(checkpoint),
        "epochs": train_config.epochs,
        "seconds": round(seconds, 1),
        "best_metric": train_config.best_metric,
        "best_value": result.best_value,
        "output_dir": str(output_dir),
    }
    note = f"{train_config.epochs} epoch(s), exporting {checkpoint.name}"
    return StageResult(checkpoint, note, {"training": training})


def evaluate_model(checkpoint_path: Path) -> StageResult[None]:
    """Record the COCO metrics of the trained model on the validation split.

    Training evaluates after every epoch; the last evaluation is the trained model's, so this
    stage reads it from the checkpoint instead of running the same evaluation twice.
    """
    checkpoint = load_checkpoint(checkpoint_path)
    recorded = checkpoint.metrics or {}
    metrics = {k: float(v) for k, v in recorded.items() if isinstance(v, (int, float))}
    note = (
        ", ".join(f"{k} {format_metric(metrics[k])}" for k in ("AP", "AP50") if k in metrics)
        if metrics
        else "no validation metrics recorded"
    )
    per_category = recorded.get("per_category") or {}
    return StageResult(None, note, {"training": {"metrics": metrics, "per_category": per_category}})


# --------------------------------------------------------------------------- export


def export_model(run: RunContext, checkpoint: Path) -> StageResult[int]:
    """Export the checkpoint as the model's next version; the value is the version number."""
    # The configuration that produced this version travels inside it (re-run it to retrain),
    # copied by export before the version is published, so it is there from the first moment.
    export_config = dataclasses.replace(run.config.export, extra_files=(run.config_file,))
    result = export_checkpoint(checkpoint, export_config)
    version_dir = Path(result.version_dir)
    record = {
        "model_version": int(result.version),
        "version_dir": str(version_dir),
        "export": {
            "version": int(result.version),
            "version_dir": str(version_dir),
            "validation": _plain(result.validation),
            "precision": _plain(result.precision),
        },
    }
    gate = result.precision
    note = f"version {result.version} at {version_dir}" + (
        f"; {gate.format_line()}" if gate else ""
    )
    return StageResult(int(result.version), note, record)


def _plain(value: object) -> dict[str, object]:
    """A gate's result as JSON-ready data (``{}`` when the gate did not run)."""
    if value is None:
        return {}
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json.loads(json.dumps(dataclasses.asdict(value), default=str))
    return {"result": str(value)}


# --------------------------------------------------------------------------- serve


def start_server(run: RunContext, stack: contextlib.ExitStack) -> StageResult[TritonServer]:
    """Start the embedded Triton on the repository; ``stack`` stops it when the run ends."""
    serve_config = dataclasses.replace(
        run.config.serve, token=run.token, run_dir=run.run_dir / "triton"
    )
    server = stack.enter_context(TritonServer(serve_config))
    endpoints = server.endpoints
    note = f"HTTP {endpoints.http}, gRPC {endpoints.grpc}"
    return StageResult(server, note, {"serve": {"http": endpoints.http, "grpc": endpoints.grpc}})


# --------------------------------------------------------------------------- predict


def _url(server: TritonServer, protocol: str) -> str:
    endpoints = server.endpoints
    return endpoints.grpc if protocol == "grpc" else endpoints.http


def _sample_images(run: RunContext, dataset: CocoDataset, count: int) -> list[tuple[str, bytes]]:
    """Validation images (not trained on) first, those with objects before negatives."""
    train = run.config.train
    ids = list(dataset.image_ids)
    try:
        _, val_ids = split_dataset(ids, train.val_fraction, train.seed)
    except DetstackError:
        val_ids = []
    rest = [i for i in ids if i not in set(val_ids)]

    def has_objects(image_id: int) -> bool:
        return len(dataset.target(image_id)["boxes"]) > 0

    ordered = sorted(val_ids, key=lambda i: not has_objects(i)) + rest
    return [(Path(dataset.file_name(i)).name, dataset.read_image_bytes(i)) for i in ordered[:count]]


def smoke_predict(run: RunContext, server: TritonServer, dataset: CocoDataset) -> StageResult[None]:
    """Predict a few validation images through the server; draw them for the report."""
    section = run.config.predict
    url = _url(server, section.protocol)
    images = _sample_images(run, dataset, section.images)
    if not images:
        raise PipelineError("no image to predict on")
    with DetectionClient(
        url, model=run.config.name, protocol=section.protocol, token=run.token.value
    ) as client:
        client.wait_until_ready(timeout=60)
        result = predict_to_folder(
            client, images, run.run_dir / "predictions", section.score_threshold
        )
    failed = [outcome for outcome in result.images if outcome.error is not None]
    if failed:
        raise PipelineError(
            f"{len(failed)} of {len(images)} sample images failed: {failed[0].error}"
        )
    entries = []
    for outcome in result.images:
        entry = outcome.to_dict()
        found = outcome.detections
        shown = ", ".join(f"{n} {s:.2f}" for n, s in zip(found.names, found.scores, strict=True))
        entry["image"] = str(outcome.output.relative_to(run.run_dir))
        entry["caption"] = f"{outcome.source}: {shown or 'no detection'}"
        entries.append(entry)
    smoke = {
        "url": f"{section.protocol}://{url}",
        "score_threshold": section.score_threshold,
        "detections": result.detections,
        "detections_file": str(result.detections_file.relative_to(run.run_dir)),
        "predictions": entries,
    }
    note = f"{result.detections} detections on {len(entries)} images"
    return StageResult(None, note, {"smoke": smoke})


#: Most COCO AP points (AP x 100) the served model may lose against eager PyTorch.
SERVED_AP_TOLERANCE = 0.2


def served_accuracy(
    run: RunContext, server: TritonServer, checkpoint_path: Path
) -> StageResult[None]:
    """COCO AP of the validation split sent encoded through the real Triton, beside eager's.

    The eager figure is training's last evaluation (PyTorch on the same checkpoint and split);
    the served one goes the way a user's request goes: the image file, decoded by the server.
    """
    checkpoint = load_checkpoint(checkpoint_path)
    eager = (checkpoint.metrics or {}).get("AP")
    if eager is None:
        return StageResult(None, "skipped (the checkpoint has no validation AP to compare with)")
    split = training_split(
        checkpoint, run.config.dataset.source, s3_endpoint_url=run.config.dataset.s3_endpoint_url
    )
    ids = list(split.val_ids)
    with DetectionClient(
        _url(server, "grpc"), model=run.config.name, protocol="grpc", token=run.token.value
    ) as client:
        client.wait_until_ready(timeout=60)
        answers = client.predict_arrays([split.dataset.read_image_bytes(i) for i in ids])
    results = [
        entry
        for image_id, found in zip(ids, answers, strict=True)
        for entry in detections_to_coco(image_id, found.boxes, found.scores, found.labels)
    ]
    served = coco_metrics(split.dataset.to_coco_api(ids), results, ids)
    gap = 100.0 * (float(eager) - served["AP"])
    accuracy = {
        "images": len(ids),
        "eager_AP": round(100.0 * float(eager), 2),
        "served_AP": round(100.0 * served["AP"], 2),
        "served_AP50": round(100.0 * served["AP50"], 2),
        "ap_gap": round(gap, 3),
        "tolerance": SERVED_AP_TOLERANCE,
        "within_tolerance": gap <= SERVED_AP_TOLERANCE,
        "wire": "encoded (image files through Triton, decoded by the server)",
    }
    if gap > SERVED_AP_TOLERANCE:
        logger.warning(
            "served AP %.2f is %.2f points below eager %.2f (tolerance %.1f)",
            100 * served["AP"],
            gap,
            100 * float(eager),
            SERVED_AP_TOLERANCE,
        )
    note = (
        f"served AP {100 * served['AP']:.2f} vs eager {100 * float(eager):.2f} "
        f"on {len(ids)} validation images"
    )
    return StageResult(None, note, {"accuracy": accuracy})


# --------------------------------------------------------------------------- bench


def benchmark(run: RunContext, server: TritonServer, checkpoint: Path) -> StageResult[None]:
    """Measure the served model on the dataset's images (``bench.enabled: false`` skips it).

    With ``bench.baseline`` the seed's eager wrapper runs on ``checkpoint`` in the same run, so
    the report holds served / eager side by side; each of ``bench.photo_sizes`` is measured
    again with photo-sized JPEGs made from the same images (``bench/photo-<size>/``).
    """
    section = run.config.bench
    if not section.enabled:
        return StageResult(None, "skipped (bench.enabled: false)")
    out = run.run_dir / "bench"
    out.mkdir(exist_ok=True)
    endpoints = server.endpoints
    config = BenchConfig(
        dataset=run.config.dataset.source,
        max_images=8,
        grpc_url=endpoints.grpc,
        http_url=endpoints.http,
        protocols=tuple(section.protocols),
        model=run.config.name,
        token=run.token.value,
        concurrency=tuple(section.concurrency),
        requests=section.requests,
        warmup=section.warmup,
        checkpoint=checkpoint if section.baseline else None,
        progress=run.progress,
    )
    bench = _bench_record(
        config,
        out,
        f"{section.requests} measured requests per row after {section.warmup} warm-up requests",
        "bench/bench.png",
    )
    photos = []
    for size in section.photo_sizes:
        width, height = parse_photo_size(size, "bench.photo_sizes")
        folder = out / f"photo-{width}x{height}"
        folder.mkdir(exist_ok=True)
        photo_config = dataclasses.replace(
            config,
            photo_size=(width, height),
            concurrency=(1,),
            requests=section.photo_requests,
            warmup=min(section.warmup, 2),
        )
        record = _bench_record(
            photo_config,
            folder,
            f"the same images re-encoded as {width}x{height} JPEGs (quality 90); "
            f"{section.photo_requests} measured requests per row",
            f"bench/{folder.name}/bench.png",
        )
        photos.append({"size": f"{width}x{height}", **record})
    if photos:
        bench["photo_sizes"] = photos
    p50s = [r["p50_ms"] for r in bench["results"] if r.get("count")]
    note = f"{len(p50s)} settings, best p50 {min(p50s):.1f} ms" if p50s else "no result"
    speedups = [v for k, v in bench["ratios"].items() if k.endswith("_p50_speedup_at_c1")]
    if speedups:
        note += f", served {max(speedups):.2f}x eager"
    return StageResult(None, note, {"bench": bench})


def _bench_record(config: BenchConfig, out: Path, what: str, plot: str) -> dict[str, Any]:
    """Run one benchmark, write its files into ``out``, and return what run.json keeps.

    ``plot`` is the latency plot's path relative to the run folder (the report links it).
    """
    report = run_benchmark(config)
    write_report(report, out)  # bench.json (with every latency), bench.csv, bench.png
    data = report.to_dict()
    for result in (*data["results"], data["baseline"] or {}):
        result.pop("latencies_ms", None)  # run.json keeps the summaries only
    conditions = data.get("conditions") or {}
    cpus = conditions.get("cpu_count")
    return {
        "conditions": (
            f"{what}; embedded Triton on this machine's CPU, client on the same machine"
            + (f"; {cpus} CPUs" if cpus else "")
            + "."
        ),
        "results": data["results"],
        "baseline": data["baseline"],
        "ratios": data["ratios"],
        "plot": plot,
    }


# --------------------------------------------------------------------------- after


def next_steps(run: RunContext) -> list[str]:
    """The commands a user runs next, shown at the end of the report."""
    config = run.config
    return [
        f'detstack serve --repository {config.repository} --token "${TOKEN_ENV}"',
        f"detstack demo --endpoint grpc://127.0.0.1:8001 --model {config.name}",
        f"detstack pipeline --config {run.config_file}   # retrain: next version",
    ]
