"""The pipeline's one configuration file: YAML in, a frozen :class:`PipelineConfig` out.

The built-in defaults live in ``pipeline/default_pipeline.yaml`` (the offline quickstart: the
synthetic shapes dataset, the 128-px quickstart model, the embedded Triton). A user's file is
merged over them key by key, then command-line overrides (``--epochs 3``, ``--set
train.lr=0.01``) over that; the result is checked section by section into each stage's own
frozen config (``ModelConfig``, ``TrainConfig``, ``ExportConfig``, ``ServeConfig``), so a bad
key or value is reported with its dotted path before anything runs.

:func:`config_to_yaml` writes the effective configuration back (absolute paths, every key), so
the copy saved with a run and with the model version re-runs the same pipeline.

Example:
    >>> config = load_pipeline_config(None, {"train.epochs": 2})     # doctest: +SKIP
    >>> config.train.epochs                                          # doctest: +SKIP
    2
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from detstack.contract import DEFAULT_MODEL_NAME
from detstack.errors import ConfigError
from pipeline._schema import build_dataclass, dataclass_to_plain

__all__ = [
    "BenchSection",
    "DatasetSection",
    "PipelineConfig",
    "PredictSection",
    "config_to_plain",
    "config_to_yaml",
    "default_config_text",
    "load_pipeline_config",
    "parse_override",
]

#: Top-level sections of the file, in the order they are written.
SECTIONS = ("dataset", "model", "train", "export", "serve", "predict", "bench")
_TOP_KEYS = ("name", "repository", "runs")

#: Stage-config fields the pipeline fills in itself (from other sections or the run folder):
#: they are not part of the file.
_MANAGED = {
    "train": ("dataset", "model", "output", "resume", "s3_endpoint_url"),
    "export": (
        "repository",
        "name",
        "samples_from",
        "sample_images",
        "s3_endpoint_url",
        "extra_files",
    ),
    "serve": ("repository", "token", "run_dir", "mode", "image", "gpus"),
}


@dataclass(frozen=True)
class DatasetSection:
    """Where the COCO dataset is, and whether to create the synthetic one there if missing.

    Attributes:
        source: a dataset folder, a COCO ``.json`` file, or ``s3://bucket/prefix``.
        s3_endpoint_url: endpoint of an S3-compatible store (MinIO); ``None``: AWS defaults.
        synthesize: when ``source`` is a local folder that does not exist, write the synthetic
            shapes dataset there first (the offline default). Never touches an existing folder.
        synth_images: images of the synthetic dataset.
        synth_seed: its seed (same seed, same files).
    """

    source: str = "data/shapes"
    s3_endpoint_url: str | None = None
    synthesize: bool = True
    synth_images: int = 240
    synth_seed: int = 0

    def __post_init__(self) -> None:
        if not self.source.strip():
            raise ConfigError("dataset.source is empty; expected a folder or s3://bucket/prefix")
        if self.synth_images < 4:
            raise ConfigError(f"dataset.synth_images must be at least 4, got {self.synth_images}")


@dataclass(frozen=True)
class PredictSection:
    """The smoke prediction through the served model, drawn into the report.

    Attributes:
        images: how many validation images to send and draw.
        score_threshold: detections below this score are not drawn.
        protocol: ``grpc`` or ``http``.
    """

    images: int = 4
    score_threshold: float = 0.5
    protocol: Literal["grpc", "http"] = "grpc"

    def __post_init__(self) -> None:
        if not 1 <= self.images <= 64:
            raise ConfigError(f"predict.images must be in 1..64, got {self.images}")
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ConfigError(
                f"predict.score_threshold must be in 0..1, got {self.score_threshold}"
            )


@dataclass(frozen=True)
class BenchSection:
    """The short latency benchmark against the served model.

    Attributes:
        enabled: run it (``false`` skips the stage).
        requests: measured requests per protocol and concurrency level (after warm-up).
        warmup: requests sent first and not measured.
        concurrency: concurrency levels to measure.
        protocols: ``grpc`` and/or ``http``.
        baseline: also time the seed's eager PyTorch wrapper on the trained checkpoint and the
            same images, so the report gives served / eager side by side.
        photo_sizes: ``WIDTHxHEIGHT`` sizes to measure again with photo-sized JPEGs made from
            the dataset's images (concurrency 1, ``photo_requests`` requests): the dataset's
            own images are small, while users send camera photos.
        photo_requests: measured requests per setting of each photo size.
    """

    enabled: bool = True
    requests: int = 40
    warmup: int = 5
    concurrency: tuple[int, ...] = (1, 2)
    protocols: tuple[Literal["grpc", "http"], ...] = ("grpc", "http")
    baseline: bool = True
    photo_sizes: tuple[str, ...] = ("4000x3000",)
    photo_requests: int = 10

    def __post_init__(self) -> None:
        if self.requests < 1 or self.warmup < 0:
            raise ConfigError(
                f"bench.requests must be >= 1 and bench.warmup >= 0, got {self.requests} and "
                f"{self.warmup}"
            )
        if not self.concurrency or any(c < 1 for c in self.concurrency):
            raise ConfigError(f"bench.concurrency must list levels >= 1, got {self.concurrency}")
        if not self.protocols:
            raise ConfigError("bench.protocols is empty; expected grpc and/or http")
        if self.photo_requests < 1:
            raise ConfigError(f"bench.photo_requests must be >= 1, got {self.photo_requests}")
        from bench import parse_photo_size

        for size in self.photo_sizes:
            if min(parse_photo_size(size, "bench.photo_sizes")) < 16:
                raise ConfigError(f"bench.photo_sizes: {size!r} is below 16x16")


@dataclass(frozen=True)
class PipelineConfig:
    """Everything one pipeline run needs; each stage's section is that stage's own config.

    Attributes:
        name: the model's name in the repository (Triton's model name).
        repository: the Triton model repository the new version is added to.
        runs: parent folder of the run folders (``<runs>/<UTC timestamp>/``).
        dataset, model, train, export, serve, predict, bench: the sections (see the default
            file, ``detstack pipeline --print-config``).
    """

    name: str
    repository: str
    runs: str
    dataset: DatasetSection
    model: Any  # training.ModelConfig
    train: Any  # training.TrainConfig
    export: Any  # export.ExportConfig (without checkpoint/repository/name)
    serve: Any  # serve.ServeConfig (repository filled in; token never stored here)
    predict: PredictSection
    bench: BenchSection


def default_config_text() -> str:
    """The built-in default configuration file, with its comments."""
    return resources.files("pipeline").joinpath("default_pipeline.yaml").read_text("utf-8")


def _read_yaml(text: str, where: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{where} is not valid YAML: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of sections, got {type(data).__name__}")
    return data


def _merge(base: dict[str, Any], update: Mapping[str, Any], where: str) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value, f"{where}.{key}")
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``--set section.key=value`` (the value is read as YAML: ``3``, ``0.01``, ``[1, 2]``).

    Raises:
        ConfigError: no ``=``, or an empty key.
    """
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected SECTION.KEY=VALUE, e.g. train.lr=0.01")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({error})") from None
    return key.strip(), parsed


def _apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def _absolute(path: str) -> str:
    if path.startswith("s3://"):
        return path
    return str(Path(os.path.expanduser(path)).resolve())


def _quickstart_defaults() -> dict[str, Any]:
    """The training stage's own quickstart preset, so the default follows it when it is tuned."""
    from training.train import QUICKSTART, QUICKSTART_SYNTH_IMAGES

    train = dataclass_to_plain(QUICKSTART, exclude={type(QUICKSTART): _MANAGED["train"]})
    return {
        "dataset": {"synth_images": QUICKSTART_SYNTH_IMAGES},
        "model": dataclass_to_plain(QUICKSTART.model),
        "train": train,
    }


def load_pipeline_config(
    path: str | os.PathLike[str] | None,
    overrides: Mapping[str, Any] | None = None,
) -> PipelineConfig:
    """Read the defaults, merge ``path`` (if given) and ``overrides``, and check everything.

    Args:
        path: a YAML file, or ``None`` for the built-in default.
        overrides: ``{"train.epochs": 3, ...}`` applied last.

    Raises:
        ConfigError: unreadable file, unknown section or key, or a bad value (its path named).
    """
    data = _merge(
        _quickstart_defaults(),
        _read_yaml(default_config_text(), "the built-in default"),
        "defaults",
    )
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigError(
                f"cannot read config file {os.fspath(path)!r} ({error.strerror or error})"
            ) from None
        data = _merge(data, _read_yaml(text, os.fspath(path)), os.fspath(path))
    data = _apply_overrides(data, overrides or {})
    return _build(data)


def _build(data: Mapping[str, Any]) -> PipelineConfig:
    from export import ExportConfig
    from serve import ServeConfig
    from training.models import ModelConfig
    from training.train import TrainConfig

    unknown = sorted(set(data) - set(SECTIONS) - set(_TOP_KEYS), key=str)
    if unknown:
        raise ConfigError(
            f"unknown top-level key(s) {', '.join(map(repr, unknown))} "
            f"(valid: {', '.join(_TOP_KEYS + SECTIONS)})"
        )
    name = data.get("name", DEFAULT_MODEL_NAME)
    for key in _TOP_KEYS:
        if not isinstance(data.get(key, ""), str) or not str(data.get(key, "x")).strip():
            raise ConfigError(f"{key}: expected non-empty text, got {data.get(key)!r}")
    repository = _absolute(data.get("repository", "model_repository"))
    runs = _absolute(data.get("runs", "runs"))

    dataset = build_dataclass(DatasetSection, data.get("dataset"), "dataset")
    if not dataset.source.startswith("s3://"):
        dataset = DatasetSection(**{**dataset.__dict__, "source": _absolute(dataset.source)})
    model = build_dataclass(ModelConfig, data.get("model"), "model")
    shared = {"s3_endpoint_url": dataset.s3_endpoint_url}
    train = build_dataclass(
        TrainConfig,
        data.get("train"),
        "train",
        exclude=_MANAGED["train"],
        extra={"dataset": dataset.source, "model": model, **shared},
    )
    export = build_dataclass(
        ExportConfig,
        data.get("export"),
        "export",
        exclude=_MANAGED["export"],
        extra={
            "repository": Path(repository),
            "name": name,
            "samples_from": dataset.source,
            **shared,
        },
    )
    serve = build_dataclass(
        ServeConfig,
        data.get("serve"),
        "serve",
        exclude=_MANAGED["serve"],
        extra={"repository": repository},
    )
    if serve.mode != "embedded":
        raise ConfigError("serve: the pipeline serves with the embedded Triton only")
    return PipelineConfig(
        name=name,
        repository=repository,
        runs=runs,
        dataset=dataset,
        model=model,
        train=train,
        export=export,
        serve=serve,
        predict=build_dataclass(PredictSection, data.get("predict"), "predict"),
        bench=build_dataclass(BenchSection, data.get("bench"), "bench"),
    )


def config_to_plain(config: PipelineConfig) -> dict[str, Any]:
    """The effective configuration as plain values, without the managed fields."""
    plain: dict[str, Any] = {
        "name": config.name,
        "repository": config.repository,
        "runs": config.runs,
    }
    for section in SECTIONS:
        value = getattr(config, section)
        skipped = {type(value): _MANAGED.get(section, ())}
        plain[section] = dataclass_to_plain(value, exclude=skipped)
    return plain


def config_to_yaml(config: PipelineConfig, *, header: str = "") -> str:
    """The effective configuration as a YAML file that :func:`load_pipeline_config` reads back.

    The API token is never part of it (it is not part of :class:`PipelineConfig`).
    """
    text = yaml.safe_dump(config_to_plain(config), sort_keys=False, default_flow_style=False)
    prefix = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return prefix + text
