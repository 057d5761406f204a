"""Unit tests of the Triton config builder: built through model_config_pb2, parsed back."""

from __future__ import annotations

import json

import pytest

from detstack.contract import (
    GRAPH_INPUTS,
    LABEL_MAP_PARAMETER,
    OUTPUTS,
    RESIZE_PARAMETER,
    SERVED_INPUTS,
)
from detstack.errors import ConfigError
from export.triton_config import (
    ConfigOptions,
    WarmupSample,
    build_config,
    parse_pbtxt,
    to_pbtxt,
)

LABEL_MAPS = {
    1: {0: {"name": "circle", "color": "#66c2a5"}, 7: {"name": "triangle", "color": "#fc8d62"}},
    2: {3: {"name": "square", "color": "#8da0cb"}},
}
WARMUP = [WarmupSample("sample0", "v2-sample0.raw", height=48, width=64)]


def round_trip(flavour: str, options: ConfigOptions | None = None):
    config = build_config(
        flavour,
        name="my-detection-model",
        label_maps=LABEL_MAPS,
        warmup=WARMUP,
        options=options or ConfigOptions(),
    )
    return parse_pbtxt(to_pbtxt(config))


@pytest.mark.parametrize("flavour", ["gpu", "embedded"])
def test_config_parses_back_with_the_contract_tensors(flavour):
    from tritonclient.grpc import model_config_pb2 as pb

    config = round_trip(flavour)
    assert config.name == "my-detection-model"
    assert config.max_batch_size == 0
    got = [(t.name, pb.DataType.Name(t.data_type), tuple(t.dims), t.optional) for t in config.input]
    # The embedded model decodes files itself: both inputs, each optional; the GPU flavour's
    # onnxruntime backend runs the bare graph.
    inputs, optional = (SERVED_INPUTS, True) if flavour == "embedded" else (GRAPH_INPUTS, False)
    assert got == [(s.name, s.config_type, s.shape, optional) for s in inputs]
    got = [(t.name, pb.DataType.Name(t.data_type), tuple(t.dims)) for t in config.output]
    assert got == [(s.name, f"TYPE_{s.datatype}", s.shape) for s in OUTPUTS]


@pytest.mark.parametrize("flavour", ["gpu", "embedded"])
def test_label_map_of_every_version_is_a_config_parameter(flavour):
    config = round_trip(flavour)
    document = json.loads(config.parameters[LABEL_MAP_PARAMETER].string_value)
    assert document == {
        "1": {
            "0": {"name": "circle", "color": "#66c2a5"},
            "7": {"name": "triangle", "color": "#fc8d62"},
        },
        "2": {"3": {"name": "square", "color": "#8da0cb"}},
    }


@pytest.mark.parametrize("flavour", ["gpu", "embedded"])
def test_warmup_replays_the_samples_as_raw_uint8_files(flavour):
    from tritonclient.grpc import model_config_pb2 as pb

    (entry,) = round_trip(flavour).model_warmup
    assert entry.batch_size == 1
    image = entry.inputs["image"]
    assert pb.DataType.Name(image.data_type) == "TYPE_UINT8"
    assert list(image.dims) == [3, 48, 64]
    assert image.input_data_file == "v2-sample0.raw"


def test_gpu_flavour_runs_onnxruntime_on_gpu_with_heuristic_cudnn_search():
    from tritonclient.grpc import model_config_pb2 as pb

    config = round_trip("gpu")
    assert config.backend == "onnxruntime"
    assert config.default_model_filename == "model.onnx"
    assert [g.kind for g in config.instance_group] == [pb.ModelInstanceGroup.KIND_GPU]
    assert config.parameters["cudnn_conv_algo_search"].string_value == "1"
    assert not config.optimization.execution_accelerators.gpu_execution_accelerator


def test_gpu_flavour_adds_tensorrt_fp16_with_an_engine_cache_when_asked():
    options = ConfigOptions(tensorrt=True, tensorrt_cache_dir="/cache/trt")
    (accelerator,) = round_trip(
        "gpu", options
    ).optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    assert dict(accelerator.parameters) == {
        "precision_mode": "FP16",
        "max_workspace_size_bytes": str(2 << 30),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": "/cache/trt",
    }


def test_embedded_flavour_runs_the_python_backend_on_cpu_with_image_limits():
    from tritonclient.grpc import model_config_pb2 as pb

    options = ConfigOptions(cpu_instances=2, min_image_side=8, max_image_side=4096)
    config = round_trip("embedded", options)
    assert config.backend == "python"
    assert [(g.kind, g.count) for g in config.instance_group] == [
        (pb.ModelInstanceGroup.KIND_CPU, 2)
    ]
    assert config.parameters["min_image_side"].string_value == "8"
    assert config.parameters["max_image_side"].string_value == "4096"


def test_unknown_flavour_and_bad_options_are_refused():
    with pytest.raises(ConfigError, match="unknown flavour 'cpu'"):
        build_config("cpu", name="m", label_maps={}, warmup=[], options=ConfigOptions())
    with pytest.raises(ConfigError, match="tensorrt_precision must be FP16 or FP32, got 'INT8'"):
        ConfigOptions(tensorrt=True, tensorrt_precision="INT8")
    with pytest.raises(ConfigError, match="max_image_side 10 is below min_image_side 16"):
        ConfigOptions(max_image_side=10)


def test_parse_pbtxt_names_the_problem():
    with pytest.raises(ConfigError, match="invalid model config"):
        parse_pbtxt('name: "x"\nno_such_field: 1\n')


def test_embedded_config_carries_each_versions_resize_for_the_decoder():
    from export.triton_config import build_config

    config = parse_pbtxt(
        to_pbtxt(
            build_config(
                "embedded",
                name="my-detection-model",
                label_maps=LABEL_MAPS,
                warmup=WARMUP,
                options=ConfigOptions(),
                resizes={1: (128, 128), 2: (800, 1333)},
            )
        )
    )
    assert json.loads(config.parameters[RESIZE_PARAMETER].string_value) == {
        "1": {"min_size": 128, "max_size": 128},
        "2": {"min_size": 800, "max_size": 1333},
    }
    # Off by default: a reduced DCT scale measured up to 0.9 AP points below a full decode.
    assert config.parameters["draft_decode"].string_value == "0"
