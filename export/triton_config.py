"""Triton ``config.pbtxt`` for both serving flavours, built through Triton's own protobuf.

Configs are ``tritonclient``'s ``model_config_pb2.ModelConfig`` messages written with
``google.protobuf.text_format``: a misspelt field is an error here, not a model that Triton
refuses at load time. Inputs and outputs come from :mod:`detstack.contract`.

Two flavours share every version's ``model.onnx``:

* ``gpu`` (NVIDIA's Triton container): ``backend: "onnxruntime"``, ``KIND_GPU`` instances,
  cuDNN convolution algorithm search set to *heuristic* (``cudnn_conv_algo_search: "1"``): the
  default *exhaustive* search benchmarks every convolution again for each new input shape, and a
  detector sees a new shape with nearly every image. Optionally the TensorRT accelerator (FP16
  or FP32) with an engine cache, so engines built for a shape survive restarts. With
  ``ConfigOptions.gpu_decode`` it is instead an ensemble that takes the image file and decodes
  it on the GPU, in front of sibling models (:mod:`export.gpu_decode`).
* ``embedded`` (the ``tritonserver`` binary of ``nvidia-pytriton``, which has no onnxruntime
  backend): ``backend: "python"`` running :mod:`export.triton_python_model` (onnxruntime
  in-process: CUDA provider when available, else CPU), ``KIND_CPU`` instances.

Both use ``max_batch_size: 0``: one image of any height and width per request. Images of
different sizes cannot be stacked into one batch tensor, the graph takes a single image, and the
detector resizes every image itself, so server-side batching would gain nothing.

Every config carries, in ``parameters[LABEL_MAP_PARAMETER]``, the label map of every version as
JSON, and ``model_warmup`` entries that replay the latest version's samples at load time.

Example:
    >>> config = build_config("embedded", name="my-detection-model", label_maps={1: {...}},
    ...                       warmup=[], options=ConfigOptions())          # doctest: +SKIP
    >>> print(to_pbtxt(config))                                            # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from detstack.contract import (
    GRAPH_INPUTS,
    IMAGE,
    IMAGE_BYTES,
    LABEL_MAP_PARAMETER,
    OUTPUTS,
    RESIZE_PARAMETER,
    SERVED_INPUTS,
    TensorSpec,
)
from detstack.errors import ConfigError

__all__ = [
    "FLAVOURS",
    "ConfigOptions",
    "WarmupSample",
    "build_config",
    "parse_pbtxt",
    "set_gpu_onnxruntime",
    "to_pbtxt",
]

#: The flavours a repository holds: ``configs/<flavour>.pbtxt``; ``gpu`` is also config.pbtxt.
FLAVOURS: tuple[str, ...] = ("gpu", "embedded")

#: Config parameters the python-backend model reads (image limits).
MAX_SIDE_PARAMETER = "max_image_side"
MIN_SIDE_PARAMETER = "min_image_side"
MAX_PIXELS_PARAMETER = "max_image_pixels"


@dataclass(frozen=True)
class ConfigOptions:
    """Serving options written into the configs.

    Attributes:
        tensorrt: add the TensorRT accelerator to the GPU flavour.
        tensorrt_precision: ``"FP16"`` or ``"FP32"``: TensorRT's compute precision.
        tensorrt_cache_dir: where TensorRT keeps built engines inside the container.
        tensorrt_workspace_bytes: TensorRT's scratch memory limit.
        gpu_instances: model instances per GPU (GPU flavour).
        cpu_instances: model instances (embedded flavour), each with its own onnxruntime session:
            two by default, so one request decodes while another runs the detector.
        draft_decode: the embedded flavour decodes JPEGs at the smallest DCT scale that still
            covers ``draft_margin`` times the working size (see
            :func:`detstack.images.decode_for_model`). Off by default: measured on the
            quickstart model it costs up to 0.9 COCO AP points against a full decode
            (``benchmarks/results/wire/draft_accuracy.json``), more than the 0.2 we allow.
        draft_margin: see ``draft_decode``.
        min_image_side / max_image_side / max_image_pixels: what the embedded model accepts;
            anything else is answered with INVALID_ARG.
        gpu_decode: the GPU flavour of ``<name>`` becomes an ensemble that takes the image
            file and decodes it on the GPU (DALI), with the sibling models ``<name>-gate``,
            ``<name>-decode`` and ``<name>-detector`` (:mod:`export.gpu_decode`). Off by
            default: the GPU flavour then takes uint8 pixels, as before.
        max_file_bytes: the largest image file the GPU flavour's gate accepts (``gpu_decode``).
    """

    tensorrt: bool = False
    tensorrt_precision: str = "FP16"
    tensorrt_cache_dir: str = "/tmp/detstack-tensorrt-cache"
    tensorrt_workspace_bytes: int = 2 << 30
    gpu_instances: int = 1
    cpu_instances: int = 2
    draft_decode: bool = False
    draft_margin: float = 2.0
    min_image_side: int = 16
    max_image_side: int = 8192
    max_image_pixels: int = 40_000_000
    gpu_decode: bool = False
    max_file_bytes: int = 64 * 2**20

    def __post_init__(self) -> None:
        for name in ("gpu_instances", "cpu_instances", "min_image_side", "max_file_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_image_side < self.min_image_side:
            raise ConfigError(
                f"max_image_side {self.max_image_side} is below min_image_side "
                f"{self.min_image_side}"
            )
        if self.tensorrt_precision not in ("FP16", "FP32"):
            raise ConfigError(
                f"tensorrt_precision must be FP16 or FP32, got {self.tensorrt_precision!r}"
            )


@dataclass(frozen=True)
class WarmupSample:
    """One warmup sample: a raw CHW uint8 file in ``<model>/warmup/`` and its shape, and the
    same image as a file (Triton's BYTES warmup format: 4-byte little-endian length, bytes)."""

    name: str
    file_name: str
    height: int
    width: int
    encoded_file_name: str = ""


def _pb() -> Any:
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2


def _data_type(pb: Any, spec: TensorSpec) -> int:
    return pb.DataType.Value(spec.config_type)


def label_map_json(label_maps: Mapping[int, Mapping[Any, Mapping[str, str]]]) -> str:
    """``{"<version>": {"<id>": {"name", "color"}}}`` with sorted keys (stable diffs)."""
    document = {
        str(version): {str(k): dict(v) for k, v in sorted(label_maps[version].items())}
        for version in sorted(label_maps)
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"))


def resize_json(resizes: Mapping[int, tuple[int, int]]) -> str:
    """``{"<version>": {"min_size", "max_size"}}`` with sorted keys."""
    document = {
        str(version): {"min_size": int(resizes[version][0]), "max_size": int(resizes[version][1])}
        for version in sorted(resizes)
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"))


def build_config(
    flavour: str,
    *,
    name: str,
    label_maps: Mapping[int, Mapping[Any, Mapping[str, str]]],
    warmup: Sequence[WarmupSample],
    options: ConfigOptions,
    resizes: Mapping[int, tuple[int, int]] | None = None,
) -> Any:
    """Build the ``ModelConfig`` message of one flavour.

    ``resizes`` maps each version to the detector's ``(min_size, max_size)``: the embedded
    flavour decodes no smaller than that.

    Raises:
        ConfigError: unknown flavour.
    """
    if flavour not in FLAVOURS:
        raise ConfigError(f"unknown flavour {flavour!r}; expected one of {', '.join(FLAVOURS)}")
    if flavour == "gpu" and options.gpu_decode:
        # The decode-on-GPU ensemble in front of the <name>-detector sibling (imported here:
        # export.gpu_decode builds on this module).
        from export.gpu_decode import build_ensemble_config

        return build_ensemble_config(name=name, label_maps=label_maps, options=options)
    pb = _pb()
    config = pb.ModelConfig(name=name, max_batch_size=0)
    config.version_policy.latest.num_versions = 1
    # The embedded model decodes files itself, so it takes both inputs (each optional, one per
    # request); the GPU flavour's onnxruntime backend runs the bare graph: pixels only.
    inputs = SERVED_INPUTS if flavour == "embedded" else GRAPH_INPUTS
    for spec in inputs:
        config.input.add(
            name=spec.name,
            data_type=_data_type(pb, spec),
            dims=list(spec.shape),
            optional=flavour == "embedded",
        )
    for spec in OUTPUTS:
        config.output.add(name=spec.name, data_type=_data_type(pb, spec), dims=list(spec.shape))
    config.parameters[LABEL_MAP_PARAMETER].string_value = label_map_json(label_maps)

    if flavour == "gpu":
        set_gpu_onnxruntime(config, options)
    else:
        config.backend = "python"
        config.instance_group.add(kind=pb.ModelInstanceGroup.KIND_CPU, count=options.cpu_instances)
        config.parameters[MIN_SIDE_PARAMETER].string_value = str(options.min_image_side)
        config.parameters[MAX_SIDE_PARAMETER].string_value = str(options.max_image_side)
        config.parameters[MAX_PIXELS_PARAMETER].string_value = str(options.max_image_pixels)
        config.parameters[RESIZE_PARAMETER].string_value = resize_json(resizes or {})
        config.parameters["draft_decode"].string_value = "1" if options.draft_decode else "0"
        config.parameters["draft_margin"].string_value = f"{options.draft_margin:g}"

    for sample in warmup:
        entry = config.model_warmup.add(name=sample.name, batch_size=1)
        entry.inputs[IMAGE.name].data_type = _data_type(pb, IMAGE)
        entry.inputs[IMAGE.name].dims.extend([3, sample.height, sample.width])
        entry.inputs[IMAGE.name].input_data_file = sample.file_name
        if flavour == "embedded" and sample.encoded_file_name:
            # The same sample as a file: the first requests also exercise the decoder.
            encoded = config.model_warmup.add(name=f"{sample.name}-encoded", batch_size=1)
            encoded.inputs[IMAGE_BYTES.name].data_type = _data_type(pb, IMAGE_BYTES)
            encoded.inputs[IMAGE_BYTES.name].dims.extend(list(IMAGE_BYTES.shape))
            encoded.inputs[IMAGE_BYTES.name].input_data_file = sample.encoded_file_name
    return config


def set_gpu_onnxruntime(config: Any, options: ConfigOptions) -> None:
    """Make ``config`` run ``model.onnx`` with the onnxruntime backend on ``KIND_GPU`` instances.

    The GPU flavour's settings, shared by ``<name>`` and the ``<name>-detector`` sibling of the
    decode-on-GPU ensemble: heuristic cuDNN search, optionally TensorRT with an engine cache.
    """
    pb = _pb()
    config.backend = "onnxruntime"
    config.default_model_filename = "model.onnx"
    config.instance_group.add(kind=pb.ModelInstanceGroup.KIND_GPU, count=options.gpu_instances)
    # Top-level parameter on purpose: the backend reads it in every release, and when the
    # config has any `parameters`, a value given inside a "cuda" accelerator is overwritten
    # by this parameter's default (EXHAUSTIVE).
    config.parameters["cudnn_conv_algo_search"].string_value = "1"  # 1 = HEURISTIC
    if options.tensorrt:
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(
            name="tensorrt"
        )
        accelerator.parameters["precision_mode"] = options.tensorrt_precision
        accelerator.parameters["max_workspace_size_bytes"] = str(options.tensorrt_workspace_bytes)
        accelerator.parameters["trt_engine_cache_enable"] = "1"
        accelerator.parameters["trt_engine_cache_path"] = options.tensorrt_cache_dir


def to_pbtxt(config: Any) -> str:
    """The protobuf text format Triton reads."""
    from google.protobuf import text_format

    return text_format.MessageToString(config)


def parse_pbtxt(text: str) -> Any:
    """Parse a ``config.pbtxt`` into a ``ModelConfig`` message.

    Raises:
        ConfigError: the text is not a valid model config.
    """
    from google.protobuf import text_format

    pb = _pb()
    try:
        return text_format.Parse(text, pb.ModelConfig())
    except text_format.ParseError as error:
        raise ConfigError(f"invalid model config: {error}") from None
