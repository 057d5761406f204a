"""The pipeline's configuration file: defaults, merging, overrides and validation messages."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from detstack.errors import ConfigError
from pipeline import config_to_yaml, load_pipeline_config, parse_override
from pipeline._schema import build_dataclass


def _write(tmp_path, text: str):
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    return path


def test_the_built_in_default_is_the_offline_quickstart():
    config = load_pipeline_config(None)
    assert config.model.architecture == "quickstart"
    assert config.model.weights == "none"
    assert config.dataset.synthesize is True
    assert config.train.epochs >= 1
    assert config.serve.http_port == 0  # the run's temporary server takes free ports
    assert config.train.dataset == config.dataset.source
    assert config.train.model == config.model


def test_a_file_is_merged_over_the_defaults_key_by_key(tmp_path):
    path = _write(tmp_path, "train:\n  epochs: 3\nmodel:\n  architecture: tiny\n")
    config = load_pipeline_config(path)
    assert config.train.epochs == 3
    assert config.model.architecture == "tiny"
    assert config.train.batch_size == load_pipeline_config(None).train.batch_size


def test_overrides_win_over_the_file(tmp_path):
    path = _write(tmp_path, "train:\n  epochs: 3\n")
    key, value = parse_override("train.lr=0.005")
    config = load_pipeline_config(path, {"train.epochs": 5, key: value})
    assert (config.train.epochs, config.train.lr) == (5, 0.005)


def test_an_unknown_key_is_named_with_its_section_and_a_suggestion(tmp_path):
    with pytest.raises(ConfigError, match=r"train: unknown key 'epoch'.*did you mean 'epochs'"):
        load_pipeline_config(_write(tmp_path, "train:\n  epoch: 3\n"))


def test_an_unknown_section_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown top-level key.*'trian'"):
        load_pipeline_config(_write(tmp_path, "trian:\n  epochs: 3\n"))


def test_a_value_of_the_wrong_type_is_named_with_its_dotted_path(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.epochs: expected an integer, got 'ten'"):
        load_pipeline_config(_write(tmp_path, "train:\n  epochs: ten\n"))
    with pytest.raises(ConfigError, match=r"bench\.protocols\[0\]: 'ftp' is not allowed"):
        load_pipeline_config(None, {"bench.protocols": ["ftp"]})


def test_a_value_the_stage_refuses_is_reported_with_the_section(tmp_path):
    with pytest.raises(ConfigError, match=r"^model: unknown architecture 'yolo'"):
        load_pipeline_config(None, {"model.architecture": "yolo"})
    with pytest.raises(ConfigError, match=r"^train: lr must be a positive number"):
        load_pipeline_config(None, {"train.lr": -1})


def test_a_photo_size_that_is_not_width_x_height_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"bench\.photo_sizes must be WIDTHxHEIGHT.*'4000'"):
        load_pipeline_config(None, {"bench.photo_sizes": ["4000"]})
    with pytest.raises(ConfigError, match=r"bench\.photo_sizes: '8x8' is below 16x16"):
        load_pipeline_config(None, {"bench.photo_sizes": ["8x8"]})
    config = load_pipeline_config(None, {"bench.photo_sizes": []})
    assert config.bench.photo_sizes == () and config.bench.baseline is True


def test_keys_the_pipeline_sets_itself_are_refused_in_the_file(tmp_path):
    with pytest.raises(ConfigError, match="'output' \\(set by the pipeline itself\\)"):
        load_pipeline_config(_write(tmp_path, "train:\n  output: elsewhere\n"))
    with pytest.raises(ConfigError, match="'token' \\(set by the pipeline itself\\)"):
        load_pipeline_config(_write(tmp_path, "serve:\n  token: secret-in-a-file\n"))


def test_invalid_yaml_and_a_missing_file_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_pipeline_config(_write(tmp_path, "train: [unclosed\n"))
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_pipeline_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"SECTION\.KEY=VALUE"):
        parse_override("epochs")


def test_the_saved_configuration_reads_back_to_the_same_config(tmp_path):
    config = load_pipeline_config(
        None,
        {"train.epochs": 2, "model.architecture": "tiny", "dataset.source": str(tmp_path / "data")},
    )
    text = config_to_yaml(config, header="saved by a test")
    assert text.startswith("# saved by a test\n")
    assert "token" not in text
    again = load_pipeline_config(_write(tmp_path, text))
    assert again == config


def test_relative_paths_are_resolved_against_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_pipeline_config(None, {"repository": "repo", "dataset.source": "d"})
    assert config.repository == str(tmp_path / "repo")
    assert config.dataset.source == str(tmp_path / "d")
    assert str(config.export.repository) == str(tmp_path / "repo")


@dataclass(frozen=True)
class _Section:
    count: int = 1
    ratio: float = 0.5
    names: tuple[str, ...] = ()
    maybe: int | None = None
    flag: bool = False


def test_build_dataclass_checks_types_and_converts_lists_to_tuples():
    built = build_dataclass(_Section, {"count": 2, "ratio": 1, "names": ["a"], "maybe": None}, "s")
    assert built == _Section(count=2, ratio=1.0, names=("a",), maybe=None)
    with pytest.raises(ConfigError, match=r"s\.flag: expected true or false, got 'yes'"):
        build_dataclass(_Section, {"flag": "yes"}, "s")
    with pytest.raises(ConfigError, match=r"s\.count: expected an integer, got True"):
        build_dataclass(_Section, {"count": True}, "s")
    with pytest.raises(ConfigError, match=r"s\.maybe: expected int or null"):
        build_dataclass(_Section, {"maybe": "x"}, "s")
    with pytest.raises(ConfigError, match="s: expected a mapping"):
        build_dataclass(_Section, [1, 2], "s")
