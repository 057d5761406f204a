"""Where an API token comes from, shared by every command."""

from __future__ import annotations

import pytest

from detstack.errors import ConfigError
from detstack.tokens import TOKEN_ENV, read_token


def test_the_flag_wins_over_the_environment():
    assert read_token("from-flag", None, {TOKEN_ENV: "from-env"}) == ("from-flag", "--token")


def test_a_token_file_keeps_its_first_line_without_the_newline(tmp_path):
    path = tmp_path / "token"
    path.write_text("s3cret-value\r\n", encoding="utf-8")
    assert read_token(None, path, {}) == ("s3cret-value", f"--token-file {path}")


def test_no_token_anywhere_is_none():
    assert read_token(None, None, {}) is None


def test_flag_and_file_together_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="not both"):
        read_token("a", tmp_path / "token", {})


def test_an_unreadable_token_file_is_named_without_any_token(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the API token file") as caught:
        read_token(None, tmp_path / "missing", {TOKEN_ENV: "never-shown"})
    assert "never-shown" not in str(caught.value)
