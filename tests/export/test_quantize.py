"""INT8 export: static quantization of the tiny checkpoint's graph and the accuracy gate.

The tiny checkpoint (tests/fixtures/models.py) is re-labelled as trained on a small COCO
dataset of its own rectangles with a validation split, so the export finds calibration images
(training split) and scores both graphs (validation split) as it would for a real run.
"""

from __future__ import annotations

import dataclasses
import json
import platform
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from detstack.errors import ConfigError, ExportValidationError
from export import ExportConfig, export_checkpoint
from export.accuracy_gate import calibration_images, check_precision, training_split
from export.precision import check_model_precision
from export.quantize import (
    FLOAT_HEADS,
    FLOAT_POOLING,
    QuantizationPlan,
    fused_kernels,
    quantize_int8,
)
from tests.fixtures.models import TINY_DATASET_IDS, TINY_NAMES, tiny_shape_image

pytestmark = pytest.mark.slow

VAL_FRACTION = 0.5
SEED = 0


def write_rectangles(root: Path, count: int = 48, seed: int = 1) -> Path:
    """A COCO dataset of the tiny model's rectangles (categories 0, 3, 7)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    images, annotations = [], []
    for index in range(count):
        pixels, boxes, ids = tiny_shape_image(rng)
        name = f"{index:04d}.png"
        Image.fromarray(pixels).save(root / "images" / name)
        images.append({"id": index, "file_name": name, "width": 64, "height": 64})
        for (x1, y1, x2, y2), category in zip(boxes.tolist(), ids.tolist(), strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": index,
                    "category_id": int(category),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i, "name": n} for i, n in zip(TINY_DATASET_IDS, TINY_NAMES, strict=True)]
    document = {"images": images, "annotations": annotations, "categories": categories}
    (root / "annotations.json").write_text(json.dumps(document), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def trained_on_rectangles(tiny_checkpoint, tmp_path_factory) -> tuple[Path, Path]:
    """``(checkpoint, dataset)``: the tiny checkpoint, as if trained on the rectangles set."""
    from training.checkpoint import load_checkpoint, save_checkpoint
    from training.coco import load_dataset

    root = tmp_path_factory.mktemp("quantize")
    dataset = write_rectangles(root / "rectangles")
    checkpoint = load_checkpoint(tiny_checkpoint)
    relabelled = dataclasses.replace(
        checkpoint,
        train_config={"dataset": str(dataset), "val_fraction": VAL_FRACTION, "seed": SEED},
        dataset_fingerprint=load_dataset(str(dataset)).fingerprint,
    )
    return save_checkpoint(relabelled, root / "tiny-rectangles.pt"), dataset


@pytest.fixture(scope="module")
def fp32_graph(trained_on_rectangles, tmp_path_factory) -> Path:
    """The tiny checkpoint's FP32 graph, exported as ``detstack export`` does."""
    import torch

    from export.adapter import adapter_from_checkpoint
    from export.onnx_export import export_onnx
    from training.checkpoint import load_checkpoint

    adapter = adapter_from_checkpoint(load_checkpoint(trained_on_rectangles[0]))
    path = tmp_path_factory.mktemp("fp32") / "model.onnx"
    export_onnx(adapter, path, example=torch.zeros(3, 64, 64, dtype=torch.uint8))
    return path


@pytest.fixture(scope="module")
def split(trained_on_rectangles):
    from training.checkpoint import load_checkpoint

    return training_split(load_checkpoint(trained_on_rectangles[0]), None)


def quantized_weights(path: Path) -> set[str]:
    """Names of the nodes whose weight input comes through a DequantizeLinear node."""
    graph = onnx.load(str(path)).graph
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    return {
        n.name
        for n in graph.node
        if n.op_type in ("Conv", "Gemm") and len(n.input) > 1 and n.input[1] in dequantized
    }


def test_calibration_images_come_from_the_training_split_only(split):
    assert set(split.train_ids).isdisjoint(split.val_ids)
    train_pixels = {split.dataset.read_image(i).tobytes() for i in split.train_ids}
    images = calibration_images(split, 8)
    assert len(images) == 8
    assert all(image.dtype == np.uint8 and image.shape[0] == 3 for image in images)
    assert {image.transpose(1, 2, 0).tobytes() for image in images} <= train_pixels


def test_int8_graph_quantizes_convolutions_and_keeps_the_decoded_heads_float(
    fp32_graph, split, tmp_path
):
    record = quantize_int8(fp32_graph, tmp_path / "int8.onnx", calibration_images(split, 8))

    quantized = quantized_weights(tmp_path / "int8.onnx")
    assert record.quantized_nodes["Conv"] > 10 and record.quantized_nodes["Gemm"] == 2
    assert "/detector/backbone/body/conv1/Conv" in quantized
    assert "/detector/roi_heads/box_head/fc6/Gemm" in quantized
    assert record.kept_float and not quantized & set(record.kept_float)
    assert any("rpn/head/bbox_pred" in name for name in record.kept_float)
    assert "/detector/roi_heads/box_predictor/bbox_pred/Gemm" in record.kept_float
    assert record.to_dict()["plan"]["keep_float"] == [*FLOAT_HEADS, *FLOAT_POOLING]
    ops = {n.op_type for n in onnx.load(str(tmp_path / "int8.onnx")).graph.node}
    assert "QuantizeLinear" in ops
    # The RoI pooling stays float: RoiAlign, or on small maps its two matrix products.
    pooling = [name for name in record.kept_float if "/box_roi_pool/" in name]
    assert "RoiAlign" in ops or (pooling and all("MatMul" in name for name in pooling))
    assert not quantized & set(pooling)


def test_onnxruntime_runs_every_quantized_convolution_as_an_integer_kernel(
    fp32_graph, split, tmp_path
):
    # Regression: with int8 activations onnxruntime's x86 provider fused only the convolutions
    # whose input and output Q/DQ pairs stood alone (6 of 28 on quickstart); the others ran in
    # float between quantize/dequantize passes and INT8 was slower than FP32.
    record = quantize_int8(fp32_graph, tmp_path / "int8.onnx", calibration_images(split, 8))

    kernels = fused_kernels(tmp_path / "int8.onnx")
    float_convs = sum(1 for name in record.kept_float if name.endswith("/Conv"))
    assert kernels == record.fused
    assert kernels["QLinearConv"] == record.quantized_nodes["Conv"] > 10
    assert kernels.get("Conv", 0) + kernels.get("FusedConv", 0) == float_convs
    assert kernels["QGemm"] == record.quantized_nodes["Gemm"]
    assert record.to_dict()["onnxruntime_kernels"] == kernels
    assert record.to_dict()["plan"]["activations"].startswith("uint8")


@pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"), reason="x86's U8S8 kernels only"
)
def test_int8_activations_leave_most_convolutions_in_float_on_x86(fp32_graph, split, tmp_path):
    # Why the default plan takes uint8 activations: the int8 variant is measurably worse fused.
    plan = QuantizationPlan(activation_type="int8")
    record = quantize_int8(fp32_graph, tmp_path / "s8.onnx", calibration_images(split, 8), plan)

    assert record.fused.get("QLinearConv", 0) < record.quantized_nodes["Conv"] // 2
    assert record.to_dict()["plan"]["activations"] == "int8, symmetric, per tensor"


def test_fp32_graph_has_no_integer_kernel_and_its_batch_norms_are_folded(fp32_graph):
    # torchvision's FrozenBatchNorm2d is folded into the convolutions by the exporter's
    # constant folding: no convolution feeds a Mul, so nothing stands between Conv and its Q.
    graph = onnx.load(str(fp32_graph)).graph
    consumers = {i: n.op_type for n in graph.node for i in n.input}
    convs = [n for n in graph.node if n.op_type == "Conv"]

    assert "QLinearConv" not in fused_kernels(fp32_graph)
    assert all(consumers.get(n.output[0]) != "Mul" for n in convs)
    assert all(len(n.input) == 3 for n in convs)  # the folded shift is the bias


def test_quantization_plan_refuses_an_unknown_activation_type():
    with pytest.raises(ConfigError, match=r"activation type 'fp8'.*uint8, int8"):
        QuantizationPlan(activation_type="fp8")


def test_accuracy_gate_passes_a_graph_calibrated_on_training_images(fp32_graph, split, tmp_path):
    int8 = tmp_path / "int8.onnx"
    # Every training image (24): the tiny model's AP (about 15) moves by ~1 point per changed
    # box on 24 validation images, and 16 calibration images already cost it 1.05 points.
    quantize_int8(fp32_graph, int8, calibration_images(split, 32))

    report = check_precision(fp32_graph, int8, split, precision="int8")

    assert report.passed
    assert report.reference_ap > 10 and report.reference.metrics["AP50"] > 0.4  # it detects
    assert report.ap_drop <= 1.0
    assert report.to_dict()["split"]["images"] == len(split.val_ids)


def test_accuracy_gate_refuses_a_graph_calibrated_on_blank_images(fp32_graph, split, tmp_path):
    int8 = tmp_path / "int8-blank.onnx"
    blank = [np.full((3, 64, 64), 128, np.uint8) for _ in range(8)]
    quantize_int8(fp32_graph, int8, blank)

    with pytest.raises(ExportValidationError) as refused:
        check_precision(fp32_graph, int8, split, precision="int8")

    report = check_precision(fp32_graph, int8, split, precision="int8", raise_on_failure=False)
    message = str(refused.value)
    assert not report.passed and report.ap_drop > 1.0
    assert f"{report.candidate_ap:.2f}" in message and f"{report.reference_ap:.2f}" in message
    assert "nothing was written" in message


def test_int8_export_writes_the_quantized_graph_and_the_gate_result(
    trained_on_rectangles, tmp_path
):
    checkpoint, _ = trained_on_rectangles
    config = ExportConfig(
        repository=tmp_path / "repo", name="tiny-int8", precision="int8", calibration_images=32
    )

    result = export_checkpoint(checkpoint, config)

    manifest = json.loads(result.manifest_path.read_text())
    gate = manifest["validation"]["precision"]
    assert manifest["export"]["precision"] == "int8"
    assert gate["passed"] and gate["precision"] == "int8" and gate["ap_drop"] <= 1.0
    assert gate["quantization"]["calibration"]["split"] == "training"
    assert gate["split"]["val_fraction"] == VAL_FRACTION
    assert quantized_weights(result.onnx_path)
    assert manifest["validation"]["images"]  # the FP32 parity gate ran as before


def test_int8_export_refused_by_the_gate_writes_nothing(
    trained_on_rectangles, tmp_path, monkeypatch
):
    import export.precision

    def blank_calibration(split, count):
        return [np.full((3, 64, 64), 128, np.uint8)] * count

    monkeypatch.setattr(export.precision, "calibration_images", blank_calibration)
    config = ExportConfig(repository=tmp_path / "repo", name="tiny-int8", precision="int8")

    with pytest.raises(ExportValidationError, match="loses too much accuracy"):
        export_checkpoint(trained_on_rectangles[0], config)

    assert not (tmp_path / "repo" / "tiny-int8").exists() or not any(
        p.name.isdigit() for p in (tmp_path / "repo" / "tiny-int8").iterdir()
    )


def test_int8_needs_the_training_runs_validation_split(tiny_checkpoint, tmp_path):
    config = ExportConfig(repository=tmp_path / "repo", name="tiny-int8", precision="int8")

    with pytest.raises(ConfigError, match="needs the training dataset"):
        export_checkpoint(tiny_checkpoint, config)


def test_split_refuses_a_dataset_the_checkpoint_was_not_trained_on(trained_on_rectangles, tmp_path):
    from training.checkpoint import load_checkpoint

    other = write_rectangles(tmp_path / "other", count=12, seed=5)

    with pytest.raises(ConfigError, match="fingerprint"):
        training_split(load_checkpoint(trained_on_rectangles[0]), str(other))


@pytest.mark.parametrize(
    ("field", "value"),
    [("precision", "fp16"), ("max_ap_drop", -1.0), ("calibration_images", 0)],
)
def test_export_config_refuses_bad_precision_settings(field, value, tmp_path):
    with pytest.raises(ConfigError, match=field.split("_")[0]):
        ExportConfig(repository=tmp_path, **{field: value})


def test_a_model_name_holds_one_precision(tmp_path):
    version = tmp_path / "my-model" / "1"
    version.mkdir(parents=True)
    (version / "manifest.json").write_text(json.dumps({"export": {"opset": 15}}))

    check_model_precision(tmp_path, "my-model", "fp32")  # older manifests are FP32
    with pytest.raises(ConfigError, match="--name my-model-int8"):
        check_model_precision(tmp_path, "my-model", "int8")
    check_model_precision(tmp_path, "my-model-int8", "int8")  # a new sibling model


def test_cli_offers_int8_and_names_its_sibling_model(capsys):
    from cli.main import main
    from export._cli import _default_name

    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = capsys.readouterr().out
    for option in ("--precision", "--calibration-images", "--max-ap-drop", "--accuracy-images"):
        assert option in text
    assert _default_name("fp32") == "my-detection-model"
    assert _default_name("int8") == "my-detection-model-int8"


def test_pipeline_reads_the_precision_keys():
    from pipeline._config import load_pipeline_config

    config = load_pipeline_config(None, {"export.precision": "int8", "export.max_ap_drop": 0.5})

    assert (config.export.precision, config.export.max_ap_drop) == ("int8", 0.5)
    with pytest.raises(ConfigError, match=r"export\.precision"):
        load_pipeline_config(None, {"export.precision": "fp16"})
