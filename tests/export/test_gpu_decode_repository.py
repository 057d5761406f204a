"""export --gpu-decode writes the ensemble's sibling models with the repository's guarantees."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from detstack.contract import GPU_DECODE_PART_PARAMETER
from detstack.errors import RepositoryError
from export.repository import VersionContent, existing_versions, write_version
from export.samples import SampleImage
from export.triton_config import ConfigOptions, parse_pbtxt

NAME = "gpu-model"
GATE, DECODE, DETECTOR = (f"{NAME}-gate", f"{NAME}-decode", f"{NAME}-detector")
ON = ConfigOptions(gpu_decode=True)


def content(tmp_path: Path, tag: int) -> VersionContent:
    onnx = tmp_path / f"model-{tag}.onnx"
    onnx.write_bytes(b"not really onnx, the writer only copies it %d" % tag)
    samples = [SampleImage("sample0.png", np.zeros((6, 8, 3), np.uint8), b"png", "")]
    manifest = {"export": {"resize": {"min_size": 32, "max_size": 64}}}
    return VersionContent(onnx, manifest, samples, {tag: {"name": f"t{tag}", "color": "#e6194b"}})


def config(model_dir: Path, name: str = "config.pbtxt"):
    path = model_dir / name if name == "config.pbtxt" else model_dir / "configs" / name
    return parse_pbtxt(path.read_text(encoding="utf-8"))


def test_gpu_decode_writes_three_siblings_whose_versions_mirror_the_model(tmp_path):
    repository = tmp_path / "repo"
    write_version(repository, NAME, content(tmp_path, 1), ON)
    assert sorted(p.name for p in repository.iterdir()) == sorted([NAME, GATE, DECODE, DETECTOR])
    for sibling in (GATE, DECODE, DETECTOR):
        model_dir = repository / sibling
        assert existing_versions(model_dir) == [1]
        # Both names of the GPU flavour, identical; no embedded flavour.
        assert (model_dir / "config.pbtxt").read_bytes() == (
            model_dir / "configs" / "gpu.pbtxt"
        ).read_bytes()
        assert not (model_dir / "configs" / "embedded.pbtxt").exists()
        assert config(model_dir).parameters[GPU_DECODE_PART_PARAMETER].string_value == NAME
    gate = repository / GATE / "1"
    assert sorted(str(p.relative_to(gate)) for p in gate.rglob("*.py")) == [
        "detstack/__init__.py",
        "detstack/errors.py",
        "detstack/wire.py",
        "model.py",
    ]
    assert (repository / DECODE / "1" / "dali.py").is_file()
    onnx = repository / DETECTOR / "1" / "model.onnx"
    assert os.path.samefile(onnx, repository / NAME / "1" / "model.onnx")  # a hard link
    assert config(repository / NAME).platform == "ensemble"
    assert config(repository / NAME, "embedded.pbtxt").backend == "python"


def test_a_second_export_adds_the_new_version_to_every_sibling_and_keeps_the_first(tmp_path):
    repository = tmp_path / "repo"
    write_version(repository, NAME, content(tmp_path, 1), ON)
    first = {s: (repository / s / "1").stat().st_ino for s in (GATE, DECODE, DETECTOR)}
    write_version(repository, NAME, content(tmp_path, 2), ON)
    for sibling in (GATE, DECODE, DETECTOR):
        assert existing_versions(repository / sibling) == [1, 2]
        assert (repository / sibling / "1").stat().st_ino == first[sibling]  # not rewritten
    onnx = repository / DETECTOR / "2" / "model.onnx"
    assert onnx.read_bytes() == b"not really onnx, the writer only copies it 2"
    assert not list(repository.glob("*/.export-*"))


def test_siblings_mirror_versions_written_before_gpu_decode_was_turned_on(tmp_path):
    repository = tmp_path / "repo"
    write_version(repository, NAME, content(tmp_path, 1), ConfigOptions())
    assert sorted(p.name for p in repository.iterdir()) == [NAME]
    assert config(repository / NAME).backend == "onnxruntime"
    write_version(repository, NAME, content(tmp_path, 2), ON)
    for sibling in (GATE, DECODE, DETECTOR):
        assert existing_versions(repository / sibling) == [1, 2]


def test_a_folder_of_a_siblings_name_that_is_another_model_is_refused_and_nothing_written(
    tmp_path,
):
    repository = tmp_path / "repo"
    (repository / GATE).mkdir(parents=True)
    (repository / GATE / "config.pbtxt").write_text('name: "gpu-model-gate"\nbackend: "python"\n')
    with pytest.raises(RepositoryError, match="is not a --gpu-decode sibling of 'gpu-model'"):
        write_version(repository, NAME, content(tmp_path, 1), ON)
    assert existing_versions(repository / NAME) == []
    assert sorted(p.name for p in repository.iterdir()) == sorted([GATE, NAME])
    assert list((repository / NAME).glob(".export-*")) == []


def test_siblings_left_by_an_earlier_gpu_decode_export_are_named_in_a_warning(tmp_path, caplog):
    repository = tmp_path / "repo"
    write_version(repository, NAME, content(tmp_path, 1), ON)
    written = write_version(repository, NAME, content(tmp_path, 2), ConfigOptions())
    assert f"{GATE}, {DECODE}, {DETECTOR} keep their versions" in caplog.text
    assert config(repository / NAME).backend == "onnxruntime"  # pixels again
    assert existing_versions(repository / DETECTOR) == [1]  # left as they were
    assert all(NAME + "-" not in str(path) for path in written.configs)


def test_the_written_version_lists_the_siblings_configs_too(tmp_path):
    written = write_version(tmp_path / "repo", NAME, content(tmp_path, 1), ON)
    names = {(path.parent.name, path.name) for path in written.configs}
    assert (DECODE, "config.pbtxt") in names and ("configs", "gpu.pbtxt") in names
    assert len(written.configs) == 3 + 3 * 2


def test_an_export_that_fails_after_the_siblings_takes_them_back(tmp_path, monkeypatch):
    repository = tmp_path / "repo"
    write_version(repository, NAME, content(tmp_path, 1), ON)
    before = (repository / DETECTOR / "config.pbtxt").read_bytes()
    import export.repository as repository_module

    real = repository_module.build_config

    def failing(flavour, **kwargs):
        if flavour == "embedded":
            raise OSError(28, "No space left on device")
        return real(flavour, **kwargs)

    monkeypatch.setattr(repository_module, "build_config", failing)
    with pytest.raises(RepositoryError, match="the repository was left as it was"):
        write_version(repository, NAME, content(tmp_path, 2), ConfigOptions(gpu_decode=True))
    for model in (NAME, GATE, DECODE, DETECTOR):
        assert existing_versions(repository / model) == [1], model
    assert (repository / DETECTOR / "config.pbtxt").read_bytes() == before


def test_a_first_export_that_fails_leaves_no_sibling_folder(tmp_path, monkeypatch):
    repository = tmp_path / "repo"
    import export.repository as repository_module

    real = repository_module.build_config

    def failing(flavour, **kwargs):
        if flavour == "embedded":
            raise OSError(5, "Input/output error")
        return real(flavour, **kwargs)

    monkeypatch.setattr(repository_module, "build_config", failing)
    with pytest.raises(RepositoryError):
        write_version(repository, NAME, content(tmp_path, 1), ON)
    assert sorted(p.name for p in repository.iterdir()) == [NAME]
    assert existing_versions(repository / NAME) == []


def _warmup_files(model_dir: Path) -> set[str]:
    return {
        tensor.input_data_file
        for entry in config(model_dir).model_warmup
        for tensor in entry.inputs.values()
    }


def test_the_detector_warms_up_with_the_latest_samples_linked_into_its_own_folder(tmp_path):
    repository = tmp_path / "repo"
    write_version(repository, NAME, content(tmp_path, 1), ON)
    detector = repository / DETECTOR
    assert _warmup_files(detector) == {"v1-sample0.raw"}
    (entry,) = config(detector).model_warmup
    assert list(entry.inputs["image"].dims) == [1, 3, 6, 8]  # DALI's [1, 3, H, W]
    assert os.path.samefile(
        detector / "warmup" / "v1-sample0.raw", repository / NAME / "warmup" / "v1-sample0.raw"
    )
    write_version(repository, NAME, content(tmp_path, 2), ON)
    assert _warmup_files(detector) == {"v2-sample0.raw"}
    assert sorted(p.name for p in (detector / "warmup").iterdir()) == ["v2-sample0.raw"]


def test_a_sibling_version_the_model_no_longer_has_is_named_in_a_warning(tmp_path, caplog):
    repository = tmp_path / "repo"
    for tag in (1, 2, 3):
        write_version(repository, NAME, content(tmp_path, tag), ON)
    shutil.rmtree(repository / NAME / "2")  # someone takes version 2 back by hand
    write_version(repository, NAME, content(tmp_path, 4), ON)
    assert f"{DETECTOR} holds version(s) 2 that {NAME} no longer has" in caplog.text
    assert existing_versions(repository / DETECTOR) == [1, 2, 3, 4]  # never deleted by export


def test_a_version_number_written_again_is_refused_rather_than_served_with_the_old_graph(
    tmp_path,
):
    repository = tmp_path / "repo"
    write_version(repository, NAME, content(tmp_path, 1), ON)
    write_version(repository, NAME, content(tmp_path, 2), ON)
    shutil.rmtree(repository / NAME / "2")  # the next export takes number 2 again
    with pytest.raises(RepositoryError, match="the GPU flavour would serve the old graph"):
        write_version(repository, NAME, content(tmp_path, 3), ON)
    assert existing_versions(repository / NAME) == [1]  # left as it was
    onnx = repository / DETECTOR / "2" / "model.onnx"
    assert onnx.read_bytes() == b"not really onnx, the writer only copies it 2"
