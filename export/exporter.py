"""The export stage: checkpoint → validated ONNX → a new version in a Triton model repository.

:func:`export_checkpoint` runs, in order, stopping at the first failure with nothing written:

1. load the checkpoint, refuse non-finite weights, rebuild the trained detector (no download);
2. gather the input samples (dataset images, image files, or synthetic images);
3. trace the :class:`~export.adapter.DetectionAdapter` to ONNX in a scratch directory, run the
   ONNX checker, check the graph's inputs and outputs against the tensor contract;
4. the parity gate (:mod:`export.validation`) on the samples, a second size and a blank image;
5. only then write the version, both configs, the warmup data and the manifest
   (:mod:`export.repository`).

Example:
    >>> config = ExportConfig(repository=Path("model_repository"))
    >>> result = export_checkpoint(Path("runs/exp/checkpoint.pt"), config)   # doctest: +SKIP
    >>> result.version, result.version_dir                                   # doctest: +SKIP
    (1, PosixPath('model_repository/my-detection-model/1'))
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import platform
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from detstack import __version__
from detstack.contract import DEFAULT_MODEL_NAME, LABEL_MAP_PARAMETER, OUTPUTS, SERVED_INPUTS
from detstack.errors import ConfigError
from detstack.versions import library_versions
from export.accuracy_gate import DEFAULT_MAX_AP_DROP, PrecisionReport
from export.adapter import adapter_from_checkpoint, detector_resize
from export.onnx_export import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, GraphInfo, export_onnx
from export.precision import PrecisionOptions, check_model_precision, reduce_precision
from export.repository import (
    VersionContent,
    check_extra_files,
    validate_model_name,
    write_version,
)
from export.samples import (
    SampleImage,
    check_sample_source,
    samples_from_dataset,
    samples_from_files,
    synthetic_samples,
    validation_images,
)
from export.triton_config import ConfigOptions
from export.validation import ValidationReport, validate_export
from training.checkpoint import Checkpoint, load_checkpoint

__all__ = ["MANIFEST_FORMAT", "ExportConfig", "ExportResult", "export_checkpoint"]

logger = logging.getLogger(__name__)

MANIFEST_FORMAT = "detstack.manifest/1"


@dataclass(frozen=True)
class ExportConfig:
    """Everything one export needs, built once (by the CLI or the pipeline).

    Attributes:
        repository: the Triton model repository folder (created when missing).
        name: the model's name in the repository.
        opset: ONNX opset (default 15: the highest with the CUDA-friendly RoiAlign form).
        samples_from: a COCO dataset (folder, ``.json`` or ``s3://``) to take samples from.
        sample_images: image files to use as samples (instead of dataset images).
        sample_count: how many dataset or synthetic samples to keep.
        s3_endpoint_url: endpoint of an S3-compatible store for ``samples_from``.
        serving: options written into the Triton configs (TensorRT, instances, image limits).
        extra_files: files copied into the version directory before it is published (the
            pipeline's configuration, a model card); their names must not clash with the
            version's own files.
        precision: ``fp32`` (the parity gate only) or ``int8`` (static QDQ quantization, then
            the accuracy gate; see :mod:`export.precision`). A model name holds one precision:
            INT8 goes to a sibling model, by convention ``<name>-int8``.
        calibration_images: INT8 only: training-split images to calibrate on.
        max_ap_drop: INT8 only: the most COCO AP points the INT8 graph may lose against the
            FP32 graph on the validation split.
        accuracy_images: INT8 only: score on at most this many validation images (``None``:
            all of them).
    """

    repository: Path
    name: str = DEFAULT_MODEL_NAME
    opset: int = DEFAULT_OPSET
    samples_from: str | None = None
    sample_images: tuple[Path, ...] = ()
    sample_count: int = 3
    s3_endpoint_url: str | None = None
    serving: ConfigOptions = field(default_factory=ConfigOptions)
    extra_files: tuple[Path, ...] = ()
    precision: Literal["fp32", "int8"] = "fp32"
    calibration_images: int = 32
    max_ap_drop: float = DEFAULT_MAX_AP_DROP
    accuracy_images: int | None = None

    def __post_init__(self) -> None:
        validate_model_name(self.name)
        self.precision_options()  # checks the precision fields
        if str(self.repository).startswith("s3:"):
            raise ConfigError(
                f"export writes a local repository, got {self.repository}; export to a folder, "
                "then copy it to S3 (for example: aws s3 sync model_repository "
                "s3://bucket/model_repository)"
            )
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise ConfigError(
                f"opset {self.opset} is not supported; expected {MIN_OPSET}..{MAX_OPSET}"
            )
        if not 1 <= self.sample_count <= 16:
            raise ConfigError(f"sample_count must be in 1..16, got {self.sample_count}")
        if self.samples_from and self.sample_images:
            raise ConfigError(
                "give either a dataset to take samples from or sample images, not both"
            )

    def precision_options(self) -> PrecisionOptions:
        """The reduced-precision step's options (the dataset: ``samples_from`` if given)."""
        return PrecisionOptions(
            precision=self.precision,
            calibration_images=self.calibration_images,
            max_ap_drop=self.max_ap_drop,
            accuracy_images=self.accuracy_images,
            dataset=self.samples_from,
            s3_endpoint_url=self.s3_endpoint_url,
        )


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote and what it checked."""

    version: int
    version_dir: Path
    model_dir: Path
    onnx_path: Path
    manifest_path: Path
    configs: tuple[Path, ...]
    graph: GraphInfo
    validation: ValidationReport
    manifest: dict[str, Any]
    precision: PrecisionReport | None = None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


#: Distributions whose versions an export records in its manifest (those installed).
_RECORDED_LIBRARIES = (
    "torch",
    "torchvision",
    "onnx",
    "onnxruntime-gpu",
    "onnxruntime",
    "numpy",
    "tritonclient",
    "protobuf",
)


def _library_versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "detstack": __version__,
        **library_versions(_RECORDED_LIBRARIES),
    }


def _plain(value: Any) -> Any:
    """JSON-safe copy of checkpoint values (NaN/inf become None, tuples lists, paths strings)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def _gather_samples(config: ExportConfig) -> tuple[list[SampleImage], str]:
    if config.sample_images:
        return samples_from_files(config.sample_images), "files"
    if config.samples_from:
        samples = samples_from_dataset(
            config.samples_from, count=config.sample_count, s3_endpoint_url=config.s3_endpoint_url
        )
        return samples, f"dataset {config.samples_from}"
    return synthetic_samples(config.sample_count), "synthetic"


def _manifest(
    *,
    config: ExportConfig,
    checkpoint: Checkpoint,
    checkpoint_path: Path,
    checkpoint_sha256: str,
    onnx_path: Path,
    graph: GraphInfo,
    report: ValidationReport,
    samples: list[SampleImage],
    samples_source: str,
    resize: tuple[int, int],
) -> dict[str, Any]:
    serving = config.serving
    return {
        "format": MANIFEST_FORMAT,
        "model_name": config.name,
        "version": None,  # set by the repository writer
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "label_map": {},  # set by the repository writer
        "label_map_parameter": LABEL_MAP_PARAMETER,
        "tensors": {
            "inputs": [
                {"name": s.name, "datatype": s.datatype, "shape": list(s.shape)}
                for s in SERVED_INPUTS
            ],
            "outputs": [
                {"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in OUTPUTS
            ],
        },
        "provenance": {
            "checkpoint": {
                "path": str(checkpoint_path.resolve()),
                "sha256": checkpoint_sha256,
                "size_bytes": checkpoint_path.stat().st_size,
            },
            "dataset_fingerprint": checkpoint.dataset_fingerprint,
            "epochs_completed": checkpoint.epoch,
            "model_config": _plain(checkpoint.model_config.to_dict()),
            "training": _plain(checkpoint.train_config),
            "validation_metrics": _plain(checkpoint.metrics),
        },
        "export": {
            "exporter": "torch.onnx.export (TorchScript-based, dynamo=False)",
            "opset": config.opset,
            "onnx_sha256": _sha256(onnx_path),
            "onnx_size_bytes": onnx_path.stat().st_size,
            "graph": graph.to_dict(),
            "flavours": {
                "gpu": {
                    "config": "configs/gpu.pbtxt (also config.pbtxt)",
                    "backend": "onnxruntime",
                    "instance_kind": "KIND_GPU",
                    "instances": serving.gpu_instances,
                    "cudnn_conv_algo_search": "HEURISTIC",
                    "tensorrt": (
                        {
                            "precision": serving.tensorrt_precision,
                            "engine_cache": serving.tensorrt_cache_dir,
                        }
                        if serving.tensorrt
                        else None
                    ),
                    # export --gpu-decode: an ensemble of the siblings (export.gpu_decode)
                    "gpu_decode": (
                        {
                            "ensemble": f"{config.name}-gate -> -decode (DALI) -> -detector",
                            "max_file_bytes": serving.max_file_bytes,
                        }
                        if serving.gpu_decode
                        else None
                    ),
                },
                "embedded": {
                    "config": "configs/embedded.pbtxt",
                    "backend": "python (onnxruntime in-process)",
                    "instance_kind": "KIND_CPU",
                    "instances": serving.cpu_instances,
                    "image_limits": {
                        "min_side": serving.min_image_side,
                        "max_side": serving.max_image_side,
                        "max_pixels": serving.max_image_pixels,
                    },
                },
            },
            "max_batch_size": 0,
            # The detector's own resize: the embedded model decodes JPEGs no smaller than this.
            "resize": {"min_size": resize[0], "max_size": resize[1]},
        },
        "samples": {
            "source": samples_source,
            "images": [
                {
                    "file": f"samples/{s.name}",
                    "width": s.size[0],
                    "height": s.size[1],
                    "origin": s.source,
                }
                for s in samples
            ],
        },
        "libraries": _library_versions(),
        "validation": report.to_dict(),
    }


def export_checkpoint(checkpoint_path: Path, config: ExportConfig) -> ExportResult:
    """Export the checkpoint at ``checkpoint_path`` as the next version of ``config.name``.

    Raises:
        CheckpointError: the checkpoint cannot be read or does not fit its architecture.
        ExportError: non-finite weights, the exporter or the ONNX checker failed.
        ExportValidationError: ONNX and PyTorch disagree (every mismatch listed).
        RepositoryError: the repository cannot be written.
        DatasetError / ImageDecodeError: the samples cannot be read.
    """
    import torch

    checkpoint_path = Path(checkpoint_path)
    check_sample_source(config.sample_images)
    check_extra_files(config.extra_files)
    check_model_precision(Path(config.repository), config.name, config.precision)
    checkpoint = load_checkpoint(checkpoint_path)
    adapter = adapter_from_checkpoint(checkpoint)
    samples, samples_source = _gather_samples(config)
    images = validation_images(samples)
    label_map = checkpoint.category_map.label_map()
    metadata = {
        "detstack.label_map": json.dumps({str(k): v for k, v in label_map.items()}),
        "detstack.checkpoint_sha256": _sha256(checkpoint_path),
        "detstack.version": __version__,
    }
    with tempfile.TemporaryDirectory(prefix="detstack-export-") as scratch:
        onnx_path = Path(scratch) / "model.onnx"
        example = torch.from_numpy(images[0].pixels)
        graph = export_onnx(
            adapter, onnx_path, opset=config.opset, example=example, metadata=metadata
        )
        report = validate_export(
            adapter, onnx_path, images, category_ids=checkpoint.category_map.dataset_ids
        )
        logger.info("parity gate passed on %d images", len(report.checks))
        precision = None
        if config.precision != "fp32":
            onnx_path, precision = reduce_precision(
                onnx_path, checkpoint, config.precision_options(), Path(scratch)
            )
        manifest = _manifest(
            config=config,
            checkpoint=checkpoint,
            checkpoint_path=checkpoint_path,
            checkpoint_sha256=metadata["detstack.checkpoint_sha256"],
            onnx_path=onnx_path,
            graph=graph,
            report=report,
            samples=samples,
            samples_source=samples_source,
            resize=detector_resize(adapter),
        )
        manifest["export"]["precision"] = config.precision
        manifest["validation"]["precision"] = (
            precision.to_dict() if precision else {"precision": "fp32", "gate": "parity"}
        )
        content = VersionContent(
            onnx_path, manifest, samples, label_map, tuple(Path(p) for p in config.extra_files)
        )
        written = write_version(Path(config.repository), config.name, content, config.serving)
    manifest = json.loads((written.path / "manifest.json").read_text(encoding="utf-8"))
    return ExportResult(
        version=written.version,
        version_dir=written.path,
        model_dir=written.model_dir,
        onnx_path=written.path / "model.onnx",
        manifest_path=written.path / "manifest.json",
        configs=written.configs,
        graph=graph,
        validation=report,
        manifest=manifest,
        precision=precision,
    )
