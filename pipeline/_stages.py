"""The pipeline's stages, one function each, calling every stage package's public API.

Each function takes the run state (:class:`pipeline._run._Run`), does one job, records
its results in ``run.record`` and returns a one-line note for the stage table. Stage packages
are imported inside the functions so ``detstack --help`` stays fast.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detstack.errors import DatasetError, DetstackError, PipelineError

if TYPE_CHECKING:
    from pipeline._run import _Run

logger = logging.getLogger(__name__)

CONFIG_FILE_NAME = "pipeline.yaml"


def one_time_token(value: str) -> Any:
    """Wrap a random token for the run's own server (never shown, never saved)."""
    from serve import ApiToken

    return ApiToken(value, source="a one-time token of this pipeline run")


# --------------------------------------------------------------------------- data


def check_data(run: _Run) -> str:
    from training.coco import format_report, load_dataset

    section = run.config.dataset
    source = section.source
    if not source.startswith("s3://") and not Path(source).exists():
        if not section.synthesize:
            raise DatasetError(
                f"dataset {source} does not exist (set dataset.synthesize: true to create the "
                "synthetic shapes dataset there)"
            )
        from training.synth import SynthConfig, write_synthetic_dataset

        logger.info("dataset %s is missing: writing the synthetic shapes dataset", source)
        summary = write_synthetic_dataset(
            source,
            SynthConfig(images=section.synth_images, seed=section.synth_seed),
            progress=run.progress,
        )
        run.record["synthesized"] = {"images": summary.images, "annotations": summary.annotations}
    dataset = load_dataset(source, s3_endpoint_url=section.s3_endpoint_url, progress=run.progress)
    run.dataset = dataset
    report = dataset.report
    (run.run_dir / "data_report.txt").write_text(format_report(report) + "\n", encoding="utf-8")
    run.record["data"] = report.to_dict()
    return (
        f"{report.images} images, {report.training_boxes} boxes, "
        f"{len(report.categories)} categories"
    )


# --------------------------------------------------------------------------- train


def train_model(run: _Run) -> str:
    import dataclasses

    from training.train import train

    config = run.config
    output_dir = run.run_dir / "train"
    train_config = dataclasses.replace(config.train, output=str(output_dir))
    started = time.perf_counter()
    result = train(train_config, progress=run.progress)
    seconds = time.perf_counter() - started
    run.checkpoint = Path(result.best_checkpoint or result.last_checkpoint)
    run.record["training"] = {
        "checkpoint": str(run.checkpoint),
        "epochs": train_config.epochs,
        "seconds": round(seconds, 1),
        "best_metric": train_config.best_metric,
        "best_value": result.best_value,
        "output_dir": str(output_dir),
    }
    return f"{train_config.epochs} epoch(s), exporting {run.checkpoint.name}"


def evaluate_model(run: _Run) -> str:
    """Record the COCO metrics of the trained model on the validation split.

    Training evaluates after every epoch; the last evaluation is the trained model's, so this
    stage reads it from the checkpoint instead of running the same evaluation twice.
    """
    from training.checkpoint import load_checkpoint

    if run.checkpoint is None:
        raise PipelineError("no checkpoint to evaluate")
    checkpoint = load_checkpoint(run.checkpoint)
    metrics = {
        k: float(v) for k, v in (checkpoint.metrics or {}).items() if isinstance(v, (int, float))
    }
    run.record.setdefault("training", {})["metrics"] = metrics
    if not metrics:
        return "no validation metrics recorded"
    return ", ".join(f"{k} {metrics[k]:.3f}" for k in ("AP", "AP50") if k in metrics)


# --------------------------------------------------------------------------- export


def export_model(run: _Run) -> str:
    import dataclasses

    from export import export_checkpoint

    if run.checkpoint is None:
        raise PipelineError("no checkpoint to export")
    # The configuration that produced this version travels inside it (re-run it to retrain),
    # copied by export before the version is published, so it is there from the first moment.
    export_config = dataclasses.replace(
        run.config.export, extra_files=(run.run_dir / CONFIG_FILE_NAME,)
    )
    result = export_checkpoint(run.checkpoint, export_config)
    run.export_result = result
    version_dir = Path(result.version_dir)
    run.record["model_version"] = int(result.version)
    run.record["version_dir"] = str(version_dir)
    run.record["export"] = {
        "version": int(result.version),
        "version_dir": str(version_dir),
        "validation": _plain(getattr(result, "validation", None)),
        "precision": _plain(getattr(result, "precision", None)),
    }
    gate = getattr(result, "precision", None)
    return f"version {result.version} at {version_dir}" + (
        f"; {gate.format_line()}" if gate else ""
    )


def _plain(value: Any) -> Any:
    if value is None:
        return {}
    if hasattr(value, "to_dict"):
        return value.to_dict()
    import dataclasses

    if dataclasses.is_dataclass(value):
        return json.loads(json.dumps(dataclasses.asdict(value), default=str))
    return value if isinstance(value, dict) else {"result": str(value)}


# --------------------------------------------------------------------------- serve


def start_server(run: _Run) -> str:
    import dataclasses

    from serve import TritonServer

    serve_config = dataclasses.replace(
        run.config.serve, token=run.token, run_dir=run.run_dir / "triton"
    )
    server = run.stack.enter_context(TritonServer(serve_config))
    run.server = server
    endpoints = server.endpoints
    run.record["serve"] = {"http": endpoints.http, "grpc": endpoints.grpc}
    return f"HTTP {endpoints.http}, gRPC {endpoints.grpc}"


# --------------------------------------------------------------------------- predict


def _url(run: _Run, protocol: str) -> str:
    endpoints = run.server.endpoints
    return endpoints.grpc if protocol == "grpc" else endpoints.http


def _sample_images(run: _Run, count: int) -> list[tuple[str, bytes]]:
    """Validation images (not trained on) first, those with objects before negatives."""
    from training.coco import split_dataset

    dataset = run.dataset
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


def smoke_predict(run: _Run) -> str:
    from client import DetectionClient
    from client.drawing import draw_detections
    from detstack.images import decode_image

    section = run.config.predict
    out = run.run_dir / "predictions"
    out.mkdir(exist_ok=True)
    url = _url(run, section.protocol)
    images = _sample_images(run, section.images)
    entries = []
    total = 0
    with DetectionClient(
        url, model=run.config.name, protocol=section.protocol, token=run.token.value
    ) as client:
        client.wait_until_ready(timeout=60)
        results = client.predict_arrays([data for _, data in images])
        label_map = client.labels()
    for (name, data), detections in zip(images, results, strict=True):
        pixels = decode_image(data, source=name)
        drawn = draw_detections(pixels, detections, label_map, threshold=section.score_threshold)
        target = out / f"{Path(name).stem}.png"
        drawn.save(target)
        kept = detections.above(section.score_threshold)
        total += len(kept)
        entries.append(
            {
                "image": str(target.relative_to(run.run_dir)),
                "caption": f"{name}: "
                + (
                    ", ".join(f"{n} {s:.2f}" for n, s in zip(kept.names, kept.scores, strict=True))
                    or "no detection"
                ),
                "detections": [
                    {
                        "box": [round(float(v), 1) for v in box],
                        "score": round(float(score), 4),
                        "label": int(label),
                        "name": str(n),
                    }
                    for box, score, label, n in zip(
                        kept.boxes, kept.scores, kept.labels, kept.names, strict=True
                    )
                ],
            }
        )
    (out / "detections.json").write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")
    run.record["smoke"] = {
        "url": f"{section.protocol}://{url}",
        "score_threshold": section.score_threshold,
        "detections": total,
        "predictions": entries,
    }
    if not entries:
        raise PipelineError("no image to predict on")
    return f"{total} detections on {len(entries)} images"


#: Most COCO AP points (AP x 100) the served model may lose against eager PyTorch.
SERVED_AP_TOLERANCE = 0.2


def served_accuracy(run: _Run) -> str:
    """COCO AP of the validation split sent encoded through the real Triton, beside eager's.

    The eager figure is training's last evaluation (PyTorch on the same checkpoint and split);
    the served one goes the way a user's request goes: the image file, decoded by the server.
    """
    from client import DetectionClient
    from export.accuracy_gate import training_split
    from training.checkpoint import load_checkpoint
    from training.engine import coco_metrics, detections_to_coco

    if run.checkpoint is None:
        raise PipelineError("no checkpoint to compare the served model with")
    checkpoint = load_checkpoint(run.checkpoint)
    eager = (checkpoint.metrics or {}).get("AP")
    if eager is None:
        return "skipped (the checkpoint has no validation AP to compare with)"
    split = training_split(
        checkpoint, run.config.dataset.source, s3_endpoint_url=run.config.dataset.s3_endpoint_url
    )
    ids = list(split.val_ids)
    with DetectionClient(
        _url(run, "grpc"), model=run.config.name, protocol="grpc", token=run.token.value
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
    run.record["accuracy"] = {
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
    return (
        f"served AP {100 * served['AP']:.2f} vs eager {100 * float(eager):.2f} "
        f"on {len(ids)} validation images"
    )


# --------------------------------------------------------------------------- bench


def benchmark(run: _Run) -> str:
    section = run.config.bench
    if not section.enabled:
        return "skipped (bench.enabled: false)"
    from bench import BenchConfig, run_benchmark

    out = run.run_dir / "bench"
    out.mkdir(exist_ok=True)
    endpoints = run.server.endpoints
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
        progress=run.progress,
    )
    report = run_benchmark(config)
    data = report.to_dict()
    for result in data["results"]:
        result.pop("latencies_ms", None)
    (out / "bench.json").write_text(
        json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8"
    )
    conditions = data.get("conditions") or {}
    run.record["bench"] = {
        "conditions": (
            f"{section.requests} measured requests per row after {section.warmup} warm-up "
            "requests; embedded Triton on this machine's CPU, client on the same machine"
            + (f"; {conditions.get('cpu_count')} CPUs" if conditions.get("cpu_count") else "")
            + "."
        ),
        "results": data["results"],
    }
    p50s = [r["p50_ms"] for r in data["results"] if r.get("count")]
    return f"{len(p50s)} settings, best p50 {min(p50s):.1f} ms" if p50s else "no result"


# --------------------------------------------------------------------------- after


def next_steps(run: _Run) -> list[str]:
    config = run.config
    return [
        f'detstack serve --repository {config.repository} --token "$DETSTACK_API_TOKEN"',
        f"detstack demo --endpoint grpc://127.0.0.1:8001 --model {config.name}",
        f"detstack pipeline --config {run.run_dir / CONFIG_FILE_NAME}   # retrain: next version",
    ]
