"""Unit tests: API token validation, sources, headers, and the Triton restrictions built from it."""

from __future__ import annotations

import pytest

from detstack.errors import ConfigError
from serve import (
    GRPC_TOKEN_HEADER,
    HTTP_TOKEN_HEADER,
    ApiToken,
    ServeConfig,
    load_token,
    token_headers,
)
from serve._triton_args import LOCK_HEADER, redact_arguments, restriction_groups, server_arguments

GOOD = "Zt4-hS_9kq2LmX7vRb1wYc0eNj8uPa3f"


@pytest.mark.parametrize(
    ("token", "rule"),
    [
        (GOOD[:10] + "\r\nX-Injected: 1" + GOOD, "line break"),
        (GOOD + "\n", "line break"),
        (GOOD[:8] + "\x00" + GOOD, "control character"),
        (GOOD[:8] + "\x1b" + GOOD, "control character"),
        (GOOD[:8] + " " + GOOD, "a space"),
        (GOOD[:8] + "é" + GOOD, "non-ASCII"),
        ("short-token", "fewer than the 16"),
    ],
)
def test_token_that_would_break_a_header_is_refused_naming_the_rule_not_the_token(token, rule):
    with pytest.raises(ConfigError) as raised:
        ApiToken(token)
    message = str(raised.value)
    assert rule in message
    assert GOOD not in message and "short-token" not in message


def test_token_never_shows_its_value_in_repr_str_or_config_repr():
    token = ApiToken(GOOD)
    config = ServeConfig("model_repository", token=token)
    for text in (repr(token), str(token), repr(config), f"{token}"):
        assert GOOD not in text


def test_token_headers_use_bearer_and_triton_grpc_prefix():
    assert token_headers(GOOD, "http") == {HTTP_TOKEN_HEADER: f"Bearer {GOOD}"}
    assert token_headers(GOOD, "grpc") == {"triton-grpc-protocol-authorization": f"Bearer {GOOD}"}
    assert GRPC_TOKEN_HEADER == "triton-grpc-protocol-authorization"
    assert token_headers(None, "grpc") == {}


def test_load_token_prefers_flag_then_file_then_environment(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(GOOD[::-1] + "\n")
    env = {"DETSTACK_API_TOKEN": GOOD.upper()}
    assert load_token(GOOD, None, env).value == GOOD
    assert load_token(None, token_file, env).value == GOOD[::-1]
    assert load_token(None, None, env).value == GOOD.upper()
    assert load_token(None, None, {}) is None


def test_load_token_refuses_flag_and_file_together(tmp_path):
    with pytest.raises(ConfigError, match="not both"):
        load_token(GOOD, tmp_path / "token", {})


def test_load_token_from_an_unreadable_file_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match="token file"):
        load_token(None, tmp_path / "missing", {})


def test_token_restricts_every_api_but_health_and_locks_shared_memory():
    groups = restriction_groups(ApiToken(GOOD), allow_shared_memory=False, lock_value="L")
    token_group, lock_group = groups
    assert token_group[0] == (
        "inference",
        "metadata",
        "model-config",
        "model-repository",
        "statistics",
        "trace",
        "logging",
    )
    assert token_group[1:] == (HTTP_TOKEN_HEADER, f"Bearer {GOOD}")
    assert lock_group == (("shared-memory",), LOCK_HEADER, "L")
    assert all("health" not in apis for apis, _, _ in groups)


def test_allowing_shared_memory_puts_it_under_the_token():
    (group,) = restriction_groups(ApiToken(GOOD), allow_shared_memory=True, lock_value="L")
    assert "shared-memory" in group[0]


def test_without_token_admin_apis_and_shared_memory_are_locked_and_inference_is_open():
    (group,) = restriction_groups(None, allow_shared_memory=False, lock_value="L")
    assert group == (("shared-memory", "trace", "logging"), LOCK_HEADER, "L")


def test_server_arguments_carry_secure_defaults_and_both_protocol_restrictions():
    config = ServeConfig("repo", token=ApiToken(GOOD))
    arguments = server_arguments(
        config, repository="/repo", http_port=1, grpc_port=2, metrics_port=3, lock_value="L"
    )
    assert "--model-control-mode=none" in arguments
    assert "--strict-readiness=true" in arguments
    assert "--exit-on-error=true" in arguments
    assert "--disable-auto-complete-config" in arguments
    assert "--model-config-name=embedded" in arguments
    assert not any(a.startswith("--repository-poll-secs") for a in arguments)
    restricted = [a for a in arguments if a.startswith(("--http-restricted", "--grpc-restricted"))]
    assert len(restricted) == 4
    apis = "inference,metadata,model-config,model-repository,statistics,trace,logging"
    assert f"--grpc-restricted-protocol={apis}:authorization=Bearer {GOOD}" in restricted
    assert all(GOOD not in a for a in redact_arguments(arguments, [GOOD, "L"]))


def test_poll_mode_sets_model_control_poll_and_interval():
    config = ServeConfig("repo", poll=True, poll_interval_s=2)
    arguments = server_arguments(
        config, repository="/repo", http_port=1, grpc_port=2, metrics_port=3, lock_value="L"
    )
    assert "--model-control-mode=poll" in arguments
    assert "--repository-poll-secs=2" in arguments
