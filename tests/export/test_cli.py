"""``detstack export`` command line: help and errors (the full run is in test_export.py)."""

from __future__ import annotations

import pytest

from cli.main import main


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["export", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for option in ("--repository", "--name", "--opset", "--samples-from", "--sample-images",
                   "--tensorrt", "--tensorrt-precision", "--tensorrt-cache-dir",
                   "--cpu-instances", "--max-image-side", "--s3-endpoint-url"):  # fmt: skip
        assert option in text


def test_a_missing_checkpoint_is_a_one_line_error_and_writes_nothing(tmp_path, capsys):
    repository = tmp_path / "model_repository"
    status = main(["export", str(tmp_path / "missing.pt"), "--repository", str(repository)])
    assert status == 1
    assert "missing.pt does not exist" in capsys.readouterr().err
    assert not repository.exists()


def test_tensorrt_precision_without_tensorrt_is_refused(tmp_path, capsys):
    status = main(["export", str(tmp_path / "x.pt"), "--tensorrt-precision", "fp32"])
    assert status == 1
    assert "--tensorrt-precision needs --tensorrt" in capsys.readouterr().err


def test_an_invalid_model_name_is_refused(tmp_path, capsys):
    status = main(["export", str(tmp_path / "x.pt"), "--name", "../escape"])
    assert status == 1
    assert "invalid model name '../escape'" in capsys.readouterr().err


def test_an_s3_repository_is_refused_with_what_to_do_instead(tmp_path, capsys):
    status = main(["export", str(tmp_path / "x.pt"), "--repository", "s3://bucket/models"])
    assert status == 1
    assert "aws s3 sync" in capsys.readouterr().err
