"""Integration tests of the export stage on the tiny checkpoint (real ONNX export, real
onnxruntime, real repository files)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from detstack.contract import (
    DEFAULT_MODEL_NAME,
    GRAPH_INPUTS,
    IMAGE_BYTES,
    LABEL_MAP_PARAMETER,
    OUTPUTS,
)
from detstack.errors import ExportError, ExportValidationError
from export.repository import VersionContent, write_version
from export.samples import samples_from_files
from export.triton_config import ConfigOptions
from tests.fixtures.models import TINY_BACKGROUND, TINY_COLORS, TINY_DATASET_IDS
from tests.fixtures.repository import export_tiny

pytestmark = pytest.mark.slow

ONNX_TYPES = {
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(float)": "TYPE_FP32",
    "tensor(int64)": "TYPE_INT64",
}


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (lock file aside) and the sha256 of its content."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != ".detstack-export.lock"
    }


def copy_repository(source: Path, tmp_path: Path) -> Path:
    target = tmp_path / "model_repository"
    shutil.copytree(source, target)
    return target


def manifest_of(repository: Path, version: int = 1) -> dict:
    return json.loads(
        (repository / DEFAULT_MODEL_NAME / str(version) / "manifest.json").read_text()
    )


def content_of(version_dir: Path) -> VersionContent:
    """The content of an existing version, to write again through the repository writer."""
    manifest = json.loads((version_dir / "manifest.json").read_text())
    samples = samples_from_files(sorted((version_dir / "samples").iterdir()))
    label_map = {int(k): v for k, v in manifest["label_map"].items()}
    return VersionContent(version_dir / "model.onnx", manifest, samples, label_map)


def rectangle(category: int, width: int = 72, height: int = 64) -> np.ndarray:
    image = np.full((height, width, 3), TINY_BACKGROUND, np.uint8)
    image[16:44, 20:52] = TINY_COLORS[category]
    return np.ascontiguousarray(image.transpose(2, 0, 1))


def test_export_passes_the_parity_gate_on_two_sizes_and_a_blank_image(tiny_model_repository):
    validation = manifest_of(tiny_model_repository)["validation"]
    assert validation["passed"] is True
    assert (validation["iou_threshold"], validation["score_tolerance"]) == (0.99, 1e-3)
    images = validation["images"]
    sizes = {(i["width"], i["height"]) for i in images if not i["blank"]}
    assert len(sizes) >= 2
    assert any(
        i["pytorch_detections"] > 0 and i["matched"] == i["pytorch_detections"] for i in images
    )
    (blank,) = [i for i in images if i["blank"]]
    assert (blank["pytorch_detections"], blank["onnx_detections"]) == (0, 0)
    assert validation["empty_output_exercised"] is True


def test_exported_graph_answers_with_the_dataset_category_ids_including_zero(tiny_model_repository):
    import onnxruntime

    path = tiny_model_repository / DEFAULT_MODEL_NAME / "1" / "model.onnx"
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for category, dataset_id in enumerate(TINY_DATASET_IDS):
        boxes, scores, labels = session.run(None, {"image": rectangle(category)})
        assert labels.dtype == np.int64 and set(labels) <= set(TINY_DATASET_IDS)
        assert labels[np.argmax(scores)] == dataset_id
        assert boxes.shape == (len(scores), 4)
    boxes, scores, labels = session.run(None, {"image": np.full((3, 50, 90), 128, np.uint8)})
    assert boxes.shape == (0, 4) and scores.shape == (0,) and labels.shape == (0,)


def test_generated_configs_parse_back_and_match_the_graph(tiny_model_repository):
    import onnxruntime
    from tritonclient.grpc import model_config_pb2 as pb

    from export.triton_config import parse_pbtxt

    model_dir = tiny_model_repository / DEFAULT_MODEL_NAME
    session = onnxruntime.InferenceSession(
        str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )

    def graph_tensors(values):
        return [
            (v.name, ONNX_TYPES[v.type], tuple(d if isinstance(d, int) else -1 for d in v.shape))
            for v in values
        ]

    assert graph_tensors(session.get_inputs()) == [
        (s.name, f"TYPE_{s.datatype}", s.shape) for s in GRAPH_INPUTS
    ]
    assert graph_tensors(session.get_outputs()) == [
        (s.name, f"TYPE_{s.datatype}", s.shape) for s in OUTPUTS
    ]
    assert (model_dir / "config.pbtxt").read_bytes() == (
        model_dir / "configs" / "gpu.pbtxt"
    ).read_bytes()
    label_map = manifest_of(tiny_model_repository)["label_map"]
    assert set(label_map) == {"0", "3", "7"}
    for name in ("config.pbtxt", "configs/gpu.pbtxt", "configs/embedded.pbtxt"):
        config = parse_pbtxt((model_dir / name).read_text())
        assert config.name == DEFAULT_MODEL_NAME
        configured = [
            (t.name, pb.DataType.Name(t.data_type), tuple(t.dims))
            for t in (*config.input, *config.output)
        ]
        embedded = name.endswith("embedded.pbtxt")
        # The embedded model also takes the image file (image_bytes) before the graph's pixels.
        expected_inputs = [(IMAGE_BYTES.name, IMAGE_BYTES.config_type, IMAGE_BYTES.shape)]
        expected = graph_tensors([*session.get_inputs(), *session.get_outputs()])
        assert configured == ((expected_inputs if embedded else []) + expected)
        assert json.loads(config.parameters[LABEL_MAP_PARAMETER].string_value) == {"1": label_map}
        assert len(config.model_warmup) == (4 if embedded else 2)
        for entry in config.model_warmup:
            if "image" in entry.inputs:
                tensor = entry.inputs["image"]
                raw = model_dir / "warmup" / tensor.input_data_file
                assert raw.stat().st_size == int(np.prod(tensor.dims))
            else:  # Triton's BYTES warmup: 4-byte little-endian length, then the file
                data = (
                    model_dir / "warmup" / entry.inputs["image_bytes"].input_data_file
                ).read_bytes()
                assert int.from_bytes(data[:4], "little") == len(data) - 4


def test_each_version_carries_model_manifest_python_model_and_samples(
    tiny_model_repository, tiny_checkpoint
):
    version_dir = tiny_model_repository / DEFAULT_MODEL_NAME / "1"
    manifest = manifest_of(tiny_model_repository)
    assert manifest["version"] == 1 and manifest["model_name"] == DEFAULT_MODEL_NAME
    provenance = manifest["provenance"]
    assert (
        provenance["checkpoint"]["sha256"]
        == hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()
    )
    assert provenance["dataset_fingerprint"] == "tiny-rectangles-fixture"
    assert provenance["epochs_completed"] == 1 and provenance["training"]["epochs"] == 1
    assert manifest["label_map"]["0"] == {"name": "red", "color": "#66c2a5"}
    export = manifest["export"]
    # The tiny model's maps are small: its RoI pooling is export._roi_align's matrix form.
    assert export["opset"] == 15 and export["graph"]["roi_align"] == []
    assert export["graph"]["roi_pooling"] == "matrix products"
    assert (
        export["onnx_sha256"]
        == hashlib.sha256((version_dir / "model.onnx").read_bytes()).hexdigest()
    )
    assert {"torch", "torchvision", "onnx", "numpy"} <= set(manifest["libraries"])
    for sample in manifest["samples"]["images"]:
        assert (version_dir / sample["file"]).is_file()
    source = Path(__file__).parents[2] / "export" / "triton_python_model.py"
    assert (version_dir / "model.py").read_bytes() == source.read_bytes()


def test_versions_increment_and_are_never_overwritten(
    tiny_model_repository, tiny_checkpoint, tmp_path, capsys
):
    from cli.main import main

    repository = copy_repository(tiny_model_repository, tmp_path)
    model_dir = repository / DEFAULT_MODEL_NAME
    version_one = snapshot(model_dir / "1")
    samples = sorted((model_dir / "1" / "samples").iterdir())

    status = main(["export", str(tiny_checkpoint), "--repository", str(repository),
                   "--sample-images", *map(str, samples)])  # fmt: skip

    assert status == 0
    out = capsys.readouterr().out
    assert f"exported version 2 of {DEFAULT_MODEL_NAME}: {model_dir / '2'}" in out
    assert "blank (blank)" in out and "RoI pooling by matrix products" in out
    assert snapshot(model_dir / "1") == version_one
    assert manifest_of(repository, 2)["version"] == 2
    from export.triton_config import parse_pbtxt

    config = parse_pbtxt((model_dir / "configs" / "embedded.pbtxt").read_text())
    assert set(json.loads(config.parameters[LABEL_MAP_PARAMETER].string_value)) == {"1", "2"}
    assert sorted(p.name for p in (model_dir / "warmup").iterdir()) == [
        "v2-sample0.bytes",
        "v2-sample0.raw",
        "v2-sample1.bytes",
        "v2-sample1.raw",
    ]
    written = write_version(
        repository, DEFAULT_MODEL_NAME, content_of(model_dir / "2"), ConfigOptions()
    )
    assert written.version == 3 and written.path == model_dir / "3"
    assert snapshot(model_dir / "1") == version_one


@pytest.mark.parametrize("failure_point", ["warmup", "second config", "rename"])
def test_an_interrupted_export_leaves_no_partial_version(
    failure_point, tiny_model_repository, tmp_path, monkeypatch
):
    import export.repository as repository_module

    repository = copy_repository(tiny_model_repository, tmp_path)
    before = snapshot(repository)

    def fail(*args, **kwargs):
        raise RuntimeError(f"injected failure at {failure_point}")

    if failure_point == "warmup":
        monkeypatch.setattr(repository_module, "_write_warmup", fail)
    elif failure_point == "second config":
        real, calls = repository_module.to_pbtxt, []

        def to_pbtxt_then_fail(config):
            calls.append(config)
            if len(calls) == 2:  # the gpu configs are written by now
                fail()
            return real(config)

        monkeypatch.setattr(repository_module, "to_pbtxt", to_pbtxt_then_fail)
    else:
        monkeypatch.setattr(repository_module.os, "rename", fail)

    content = content_of(repository / DEFAULT_MODEL_NAME / "1")
    with pytest.raises(RuntimeError, match="injected failure"):
        write_version(repository, DEFAULT_MODEL_NAME, content, ConfigOptions())

    assert snapshot(repository) == before
    model_dir = repository / DEFAULT_MODEL_NAME
    assert sorted(p.name for p in model_dir.iterdir() if p.is_dir()) == ["1", "configs", "warmup"]


def test_a_failed_parity_gate_lists_every_mismatch_and_writes_nothing(
    tiny_model_repository, tiny_checkpoint, tmp_path, monkeypatch
):
    import torch

    import export.exporter as exporter

    repository = copy_repository(tiny_model_repository, tmp_path)
    before = snapshot(repository)
    real_export = exporter.export_onnx

    def export_with_wrong_ids(adapter, path, **kwargs):
        # A graph whose label lookup is off by one: what a broken export would ship.
        saved = adapter.dataset_ids.clone()
        adapter.dataset_ids = torch.tensor([-1, 1, 2, 3])
        try:
            return real_export(adapter, path, **kwargs)
        finally:
            adapter.dataset_ids = saved

    monkeypatch.setattr(exporter, "export_onnx", export_with_wrong_ids)
    with pytest.raises(ExportValidationError) as caught:
        export_tiny(repository, tiny_checkpoint)

    message = str(caught.value)
    assert "nothing was written" in message
    count = int(message.split("(")[1].split(" mismatch")[0])
    assert count == message.count("\n  - ") and count >= 2
    assert "has no ONNX match" in message and "has no PyTorch match" in message
    assert "are not category ids of the checkpoint (known: 0, 3, 7)" in message
    assert snapshot(repository) == before


def test_a_checkpoint_with_non_finite_weights_is_refused_naming_the_tensors(
    tiny_checkpoint, tmp_path
):
    import torch

    data = torch.load(tiny_checkpoint, weights_only=True)
    data["model"]["roi_heads.box_predictor.cls_score.bias"][1] = float("nan")
    data["model"]["backbone.fpn.layer_blocks.0.0.weight"][0, 0, 0, 0] = float("inf")
    broken = tmp_path / "broken.pt"
    torch.save(data, broken)
    repository = tmp_path / "model_repository"

    with pytest.raises(ExportError, match="non-finite values") as caught:
        export_tiny(repository, broken)

    assert "roi_heads.box_predictor.cls_score.bias" in str(caught.value)
    assert "backbone.fpn.layer_blocks.0.0.weight" in str(caught.value)
    assert not repository.exists()


def test_extra_files_travel_inside_the_new_version(tiny_model_repository, tmp_path):
    from dataclasses import replace

    from detstack.errors import RepositoryError
    from export.repository import check_extra_files

    repository = copy_repository(tiny_model_repository, tmp_path)
    extra = tmp_path / "pipeline.yaml"
    extra.write_text("train:\n  epochs: 3\n")
    content = replace(content_of(repository / DEFAULT_MODEL_NAME / "1"), extra_files=(extra,))

    written = write_version(repository, DEFAULT_MODEL_NAME, content, ConfigOptions())

    assert (written.path / "pipeline.yaml").read_text() == "train:\n  epochs: 3\n"
    assert manifest_of(repository, written.version)["extra_files"] == ["pipeline.yaml"]
    reserved = tmp_path / "manifest.json"
    reserved.write_text("{}")
    with pytest.raises(RepositoryError, match=r"manifest\.json is a name the version uses itself"):
        check_extra_files([reserved, tmp_path / "missing.txt"])


def test_a_barely_trained_model_with_tied_scores_passes_the_gate(tiny_checkpoint, tmp_path):
    # The seed's flow (a new box predictor, one epoch at lr 1e-5) scores every proposal almost
    # equally; here exactly: a zeroed classifier gives every class the same score. Which of
    # hundreds of tied boxes fill the last places is then up to each runtime's sort.
    import torch

    data = torch.load(tiny_checkpoint, weights_only=True)
    for key in ("cls_score", "bbox_pred"):
        data["model"][f"roi_heads.box_predictor.{key}.weight"].zero_()
        data["model"][f"roi_heads.box_predictor.{key}.bias"].zero_()
    barely = tmp_path / "barely.pt"
    torch.save(data, barely)

    result = export_tiny(tmp_path / "model_repository", barely)

    checks = manifest_of(tmp_path / "model_repository")["validation"]["images"]
    assert all(check["passed"] for check in checks)
    assert all(check["pytorch_detections"] > 0 for check in checks)
    assert result.version == 1
