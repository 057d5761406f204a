"""Where an API token comes from, shared by every command."""

from __future__ import annotations

import pytest

from detstack.errors import ConfigError
from detstack.tokens import (
    GRPC_TOKEN_HEADER,
    HTTP_TOKEN_HEADER,
    TOKEN_ENV,
    TOKEN_SCHEME,
    check_header_token,
    read_token,
    token_header_name,
    token_headers,
)


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


# --- the header both ends agree on ---------------------------------------------------------


SECRET = "Zt4hS9kq2LmX7vRb"


@pytest.mark.parametrize(
    ("token", "rule"),
    [
        (SECRET + "\r\nX-Injected: 1", "line break (CR or LF) at position 17"),
        (SECRET + " more", "a space at position 17"),
        (SECRET + "\x00", "control character at position 17"),
        (SECRET + "é", "non-ASCII character at position 17"),
        ("", "is empty"),
    ],
)
def test_a_token_no_header_can_carry_is_refused_naming_the_rule_and_position_not_the_token(
    token, rule
):
    with pytest.raises(ConfigError) as caught:
        check_header_token(token, "--token")
    message = str(caught.value)
    assert rule in message and "--token" in message
    assert SECRET not in message


def test_token_headers_are_bearer_on_http_and_carry_tritons_prefix_on_grpc():
    assert token_headers("s3cret", "http") == {HTTP_TOKEN_HEADER: f"{TOKEN_SCHEME} s3cret"}
    assert token_headers("s3cret", "grpc") == {GRPC_TOKEN_HEADER: f"{TOKEN_SCHEME} s3cret"}
    assert GRPC_TOKEN_HEADER == "triton-grpc-protocol-authorization"
    assert token_headers(None, "grpc") == {}
    assert token_headers("s3cret", "http", header="X-Key", scheme="") == {"X-Key": "s3cret"}
    assert token_header_name("grpc", "X-Key") == "triton-grpc-protocol-x-key"


def test_token_headers_refuse_an_unknown_protocol_and_a_token_that_would_inject_a_header():
    with pytest.raises(ConfigError, match="'udp'"):
        token_headers("s3cret", "udp")
    with pytest.raises(ConfigError, match="line break"):
        token_headers("s3cret\r\nX-Injected: 1", "http")
