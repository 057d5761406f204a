"""The decode-on-GPU ensemble's configs (export --gpu-decode), parsed back through protobuf.

No GPU, DALI backend or NVIDIA container here: these tests check what can be checked without
them, i.e. that every config parses, that the ensemble's tensors flow end to end through names
and shapes each step model declares (Triton's own load-time rules, restated), and that the
settings the GPU flavour needs are there.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from detstack.contract import (
    BATCHED_IMAGE,
    GPU_DECODE_PART_PARAMETER,
    IMAGE,
    IMAGE_BYTES,
    IMAGE_FILE,
    LABEL_MAP_PARAMETER,
    OUTPUTS,
    PIXELS_MODEL_PARAMETER,
    gpu_decode_model_names,
)
from export.gpu_decode import GPU_DECODE_FORMATS, config_text, sibling_configs
from export.triton_config import ConfigOptions, build_config, parse_pbtxt, to_pbtxt

NAME = "my-detection-model"
LABEL_MAPS = {1: {3: {"name": "square", "color": "#8da0cb"}}}
OPTIONS = ConfigOptions(gpu_decode=True, max_file_bytes=1_000_000)
EXPORT = Path(__file__).resolve().parents[2] / "export"


def _pb():
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2


def ensemble(options: ConfigOptions = OPTIONS):
    config = build_config("gpu", name=NAME, label_maps=LABEL_MAPS, warmup=[], options=options)
    return parse_pbtxt(to_pbtxt(config))


def siblings(options: ConfigOptions = OPTIONS) -> dict:
    return {
        name: parse_pbtxt(config_text(config))
        for name, config in sibling_configs(NAME, LABEL_MAPS, options).items()
    }


def tensors(field) -> dict[str, tuple[str, tuple[int, ...]]]:
    pb = _pb()
    return {t.name: (pb.DataType.Name(t.data_type), tuple(t.dims)) for t in field}


def wildcard_equal(left: tuple[int, ...], right: tuple[int, ...]) -> bool:
    """Triton's CompareDimsWithWildcard: same rank, each pair equal or one of them -1."""
    return len(left) == len(right) and all(
        a == b or -1 in (a, b) for a, b in zip(left, right, strict=True)
    )


def test_the_gpu_flavour_is_an_ensemble_that_takes_the_image_file():
    config = ensemble()
    assert config.platform == "ensemble"
    assert config.max_batch_size == 0
    assert tensors(config.input) == {IMAGE_BYTES.name: ("TYPE_STRING", (1,))}
    assert tensors(config.output) == {s.name: (s.config_type, s.shape) for s in OUTPUTS}
    assert json.loads(config.parameters[LABEL_MAP_PARAMETER].string_value) == {
        "1": {"3": {"name": "square", "color": "#8da0cb"}}
    }
    # Pixel clients learn from the ensemble where pixels go.
    assert config.parameters[PIXELS_MODEL_PARAMETER].string_value == f"{NAME}-detector"
    steps = [step.model_name for step in config.ensemble_scheduling.step]
    assert (
        steps
        == list(gpu_decode_model_names(NAME))
        == [
            f"{NAME}-gate",
            f"{NAME}-decode",
            f"{NAME}-detector",
        ]
    )


def test_ensemble_tensors_flow_end_to_end_through_names_and_shapes_the_steps_declare():
    """Triton's ValidateEnsembleConfig, restated: every mapped name exists in the step model,
    every model input is mapped, types agree and shapes agree up to -1, every ensemble output is
    produced, and each step reads only tensors produced before it."""
    config = ensemble()
    models = siblings()
    known = {t.name: (t.data_type, tuple(t.dims)) for t in config.input}
    for step in config.ensemble_scheduling.step:
        model = models[step.model_name]
        inputs = {t.name: (t.data_type, tuple(t.dims)) for t in model.input}
        outputs = {t.name: (t.data_type, tuple(t.dims)) for t in model.output}
        assert set(step.input_map) == set(inputs), step.model_name
        assert set(step.output_map) <= set(outputs), step.model_name
        for model_input, tensor in step.input_map.items():
            assert tensor in known, f"{step.model_name} reads {tensor} before it exists"
            assert known[tensor][0] == inputs[model_input][0], (step.model_name, tensor)
            assert wildcard_equal(known[tensor][1], inputs[model_input][1]), (tensor, model_input)
        for model_output, tensor in step.output_map.items():
            known[tensor] = outputs[model_output]
    for output in config.output:
        assert output.name in known
        assert known[output.name] == (output.data_type, tuple(output.dims))


def test_gate_runs_the_python_backend_on_cpu_with_the_limits():
    pb = _pb()
    gate = siblings()[f"{NAME}-gate"]
    assert gate.backend == "python"
    assert gate.max_batch_size == 0
    assert [g.kind for g in gate.instance_group] == [pb.ModelInstanceGroup.KIND_CPU]
    assert tensors(gate.input) == {IMAGE_BYTES.name: ("TYPE_STRING", IMAGE_BYTES.shape)}
    assert tensors(gate.output) == {IMAGE_FILE.name: ("TYPE_UINT8", (1, -1))}
    assert gate.parameters["max_file_bytes"].string_value == "1000000"
    # detstack's allow-list minus GIF, which DALI's decoder does not read.
    assert gate.parameters["allowed_formats"].string_value == "JPEG,PNG,BMP,TIFF,WEBP"
    assert "GIF" not in GPU_DECODE_FORMATS


def test_decode_runs_the_dali_backend_on_gpu_and_spells_out_max_batch_size_for_it():
    pb = _pb()
    config = sibling_configs(NAME, LABEL_MAPS, OPTIONS)[f"{NAME}-decode"]
    text = config_text(config)
    decode = parse_pbtxt(text)
    assert decode.backend == "dali"
    assert [g.kind for g in decode.instance_group] == [pb.ModelInstanceGroup.KIND_GPU]
    assert tensors(decode.input) == {IMAGE_FILE.name: ("TYPE_UINT8", (1, -1))}
    assert tensors(decode.output) == {BATCHED_IMAGE.name: ("TYPE_UINT8", (1, 3, -1, -1))}
    # The DALI backend reads max_batch_size from config.pbtxt with its own parser; protobuf's
    # text format would leave the default 0 out, and DALI would then take the model as batched.
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines[0] == "max_batch_size: 0"
    assert "max_batch_size" not in to_pbtxt(config)


def test_detector_reshapes_dalis_batched_image_to_the_graphs_input_on_gpu():
    pb = _pb()
    detector = siblings(ConfigOptions(gpu_decode=True, tensorrt=True))[f"{NAME}-detector"]
    assert detector.backend == "onnxruntime"
    assert detector.default_model_filename == "model.onnx"
    assert [g.kind for g in detector.instance_group] == [pb.ModelInstanceGroup.KIND_GPU]
    assert detector.parameters["cudnn_conv_algo_search"].string_value == "1"
    (accelerator,) = detector.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    (image,) = detector.input
    assert (image.name, tuple(image.dims)) == (BATCHED_IMAGE.name, (1, 3, -1, -1))
    assert tuple(image.reshape.shape) == IMAGE.shape == (3, -1, -1)
    assert tensors(detector.output) == {s.name: (s.config_type, s.shape) for s in OUTPUTS}
    assert LABEL_MAP_PARAMETER in detector.parameters


def _chunks(dims) -> list[int]:
    """Element counts between variable-size dimensions (Triton's ValidateIOShape rule)."""
    counts, current = [], 1
    for dim in dims:
        if dim == -1:
            counts.append(current)
            current = 1
        else:
            current *= dim
    return [*counts, current]


def test_detector_reshape_satisfies_tritons_rule_for_variable_dimensions():
    (image,) = siblings()[f"{NAME}-detector"].input
    assert _chunks(image.dims) == _chunks(image.reshape.shape) == [3, 1, 1]


def test_every_sibling_names_its_model_and_has_only_the_gpu_flavour():
    for name, config in siblings().items():
        assert config.name == name
        assert config.parameters[GPU_DECODE_PART_PARAMETER].string_value == NAME
        assert config.version_policy.latest.num_versions == 1


def test_without_gpu_decode_the_gpu_flavour_takes_pixels_as_before():
    config = ensemble(ConfigOptions())
    assert config.backend == "onnxruntime"
    assert not config.platform or config.platform != "ensemble"
    assert [t.name for t in config.input] == [IMAGE.name]
    assert PIXELS_MODEL_PARAMETER not in config.parameters


def test_embedded_flavour_is_the_same_with_and_without_gpu_decode():
    def embedded(options):
        return to_pbtxt(
            build_config("embedded", name=NAME, label_maps=LABEL_MAPS, warmup=[], options=options)
        )

    assert embedded(OPTIONS) == embedded(ConfigOptions(max_file_bytes=1_000_000))


def _string_constants(path: Path) -> dict[str, str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.targets[0].id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.targets[0], ast.Name)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    }


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        ("triton_gate_model.py", {"INPUT_NAME": IMAGE_BYTES.name, "OUTPUT_NAME": IMAGE_FILE.name}),
        ("dali_pipeline.py", {"INPUT_NAME": IMAGE_FILE.name, "OUTPUT_NAME": BATCHED_IMAGE.name}),
    ],
)
def test_the_copied_model_files_name_the_contracts_tensors(module, expected):
    # They run where detstack is not installed, so they retype the names: checked here.
    constants = _string_constants(EXPORT / module)
    assert {key: constants[key] for key in expected} == expected


def test_max_file_bytes_must_be_positive():
    from detstack.errors import ConfigError

    with pytest.raises(ConfigError, match="max_file_bytes must be at least 1, got 0"):
        ConfigOptions(max_file_bytes=0)


def test_export_command_line_turns_gpu_decode_on_with_its_file_limit(tmp_path, monkeypatch, capsys):
    import export
    from cli.main import main
    from detstack.errors import ConfigError

    seen = []

    def fake_export(checkpoint, config):
        seen.append(config.serving)
        raise ConfigError("stopped by the test after the options were built")

    monkeypatch.setattr(export, "export_checkpoint", fake_export)
    checkpoint = str(tmp_path / "x.pt")
    assert main(["export", checkpoint, "--gpu-decode", "--max-file-bytes", "1234"]) == 1
    assert main(["export", checkpoint]) == 1
    assert [(s.gpu_decode, s.max_file_bytes) for s in seen] == [(True, 1234), (False, 64 << 20)]
    assert "stopped by the test" in capsys.readouterr().err


def test_export_help_says_what_gpu_decode_does_and_what_was_not_run(capsys):
    from cli.main import main

    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--gpu-decode" in text and "--max-file-bytes" in text
    assert "(DALI: nvJPEG" in text and "Untested on a GPU" in text
