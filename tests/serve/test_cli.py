"""Tests of ``detstack serve``: the embedded command end to end, errors, and container mode."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tritonclient.http as httpclient
import yaml

from cli.main import main
from detstack.contract import DEFAULT_MODEL_NAME
from detstack.errors import RepositoryError
from serve import ApiToken, ServeConfig, container_command, write_compose_file
from serve._triton_args import shell_words
from tests.fixtures.triton import write_echo_repository

TOKEN = "cli-test-token-abcdefghijklmnop"
DETSTACK = [sys.executable, "-m", "cli.main"]


def _start_cli(
    *arguments: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, list[str]]:
    process = subprocess.Popen(
        [*DETSTACK, "serve", *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    lines: list[str] = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if line.startswith("Press Ctrl-C"):
            return process, lines
    process.kill()
    _, err = process.communicate()
    raise AssertionError(f"detstack serve did not get ready: {lines} {err}")


@pytest.mark.triton
@pytest.mark.slow
@pytest.mark.parametrize(
    ("stop_signal", "keep_connection"),
    [(signal.SIGTERM, True), (signal.SIGINT, False)],
    ids=["SIGTERM-client-connection-still-open", "SIGINT"],
)
def test_serve_prints_endpoints_and_models_then_stops_cleanly_on_signal(
    serving_repository, tmp_path, stop_signal, keep_connection
):
    # Triton waits up to --exit-timeout for open client connections; an idle one left open
    # must not turn a clean stop into a failure.
    process, lines = _start_cli(
        "--repository",
        str(serving_repository),
        "--http-port",
        "0",
        "--grpc-port",
        "0",
        "--metrics-port",
        "0",
        "--run-dir",
        str(tmp_path / "run"),
        "--exit-timeout",
        "3",
        env={"DETSTACK_API_TOKEN": TOKEN},
    )
    try:
        text = "\n".join(lines)
        assert f"{DEFAULT_MODEL_NAME} (version 1)" in text
        http = re.search(r"HTTP +http://(127\.0\.0\.1:\d+)", text)[1]
        assert re.search(r"gRPC +127\.0\.0\.1:\d+", text)
        assert re.search(r"metrics +http://127\.0\.0\.1:\d+/metrics", text)
        assert "triton-grpc-protocol-authorization: Bearer <token>" in text
        client = httpclient.InferenceServerClient(http)
        assert client.is_model_ready(DEFAULT_MODEL_NAME)
        assert client.get_model_metadata(
            DEFAULT_MODEL_NAME, headers={"authorization": f"Bearer {TOKEN}"}
        )
        if not keep_connection:
            client.close()
    finally:
        process.send_signal(stop_signal)
        out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert "Triton stopped." in out
    assert TOKEN not in text + out + err
    assert (tmp_path / "run" / "tritonserver.log").is_file()


def test_serve_of_an_empty_repository_exits_1_with_the_layout_expected(tmp_path, capsys):
    assert main(["serve", "--repository", str(tmp_path), "--http-port", "0"]) == 1
    assert "holds no model folder" in capsys.readouterr().err


def test_serve_refuses_a_token_with_a_line_break_without_echoing_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DETSTACK_API_TOKEN", "abcdefghijklmnop\r\nX-Evil: 1")
    assert main(["serve", "--repository", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "$DETSTACK_API_TOKEN" in err and "line break" in err
    assert "X-Evil" not in err and "abcdefghijklmnop" not in err


def test_container_mode_prints_a_docker_command_without_the_token(tmp_path, capsys, monkeypatch):
    repository = write_echo_repository(tmp_path / "model_repository")
    monkeypatch.setenv("DETSTACK_API_TOKEN", TOKEN)
    compose = tmp_path / "compose.yaml"
    code = main(
        [
            "serve",
            "--repository",
            str(repository),
            "--mode",
            "container",
            "--compose-file",
            str(compose),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "docker run --rm --gpus all" in out
    assert f"-v {repository}:/models:ro" in out
    assert "nvcr.io/nvidia/tritonserver:24.10-py3" in out
    assert "--model-config-name=gpu" in out
    assert TOKEN not in out and TOKEN not in compose.read_text()


def test_container_run_without_docker_says_what_to_do(tmp_path, capsys, monkeypatch):
    repository = write_echo_repository(tmp_path / "model_repository")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.chdir(tmp_path)
    assert main(["serve", "--repository", str(repository), "--mode", "container", "--run"]) == 1
    assert "docker is not installed" in capsys.readouterr().err


def _fake_tritonserver(directory: Path) -> Path:
    """A ``tritonserver`` that prints its arguments, one per line, to check the shell script."""
    directory.mkdir()
    script = directory / "tritonserver"
    script.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return directory


def test_container_command_expands_the_token_inside_the_container_only(tmp_path):
    repository = write_echo_repository(tmp_path / "model_repository")
    config = ServeConfig(str(repository), mode="container", token=ApiToken(TOKEN), poll=True)
    command = container_command(config)
    assert TOKEN not in " ".join(command)
    assert command[command.index("-e") + 1] == "DETSTACK_API_TOKEN"
    image = command.index(config.image)
    assert command[image + 1 : image + 3] == ["sh", "-c"]
    fake = _fake_tritonserver(tmp_path / "bin")
    env = {"PATH": f"{fake}:/usr/bin:/bin", "DETSTACK_API_TOKEN": TOKEN}
    arguments = subprocess.run(
        command[image + 1 :], env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert "--model-repository=/models" in arguments
    assert "--model-control-mode=poll" in arguments
    assert "--http-address=0.0.0.0" in arguments
    token_rules = [a for a in arguments if a.endswith(f":authorization=Bearer {TOKEN}")]
    assert len(token_rules) == 2
    locks = [a.rsplit("=", 1)[1] for a in arguments if "detstack-api-disabled=" in a]
    assert len(locks) == 2 and locks[0] == locks[1] and len(locks[0]) == 48


def test_container_command_refuses_to_start_without_the_token_variable(tmp_path):
    repository = write_echo_repository(tmp_path / "model_repository")
    command = container_command(
        ServeConfig(str(repository), mode="container", token=ApiToken(TOKEN))
    )
    fake = _fake_tritonserver(tmp_path / "bin")
    script = command[command.index("-c") + 1]
    result = subprocess.run(
        ["sh", "-c", script], env={"PATH": f"{fake}:/usr/bin:/bin"}, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "set DETSTACK_API_TOKEN" in result.stderr


def test_shell_words_expand_only_the_placeholder_and_keep_every_other_character_literal():
    words = shell_words(['--x=a"$HOME`b\\@@P@@', "two words", "$HOME"], {"@@P@@": "${v}"})
    script = "v='V a$l'; printf '%s\\n' " + " ".join(words)
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.splitlines() == ['--x=a"$HOME`b\\V a$l', "two words", "$HOME"]


def test_compose_file_parses_and_matches_the_docker_command(tmp_path):
    repository = write_echo_repository(tmp_path / "model_repository")
    config = ServeConfig(
        str(repository), mode="container", token=ApiToken(TOKEN), host="0.0.0.0", http_port=9000
    )
    path = write_compose_file(config, tmp_path / "compose.yaml")
    document = yaml.safe_load(path.read_text())
    service = document["services"]["triton"]
    assert service["image"] == "nvcr.io/nvidia/tritonserver:24.10-py3"
    # Metrics carry no token: not published unless --metrics-address asks (issue 10, defect 13).
    assert service["ports"] == ["0.0.0.0:9000:8000", "0.0.0.0:8001:8001"]
    assert service["volumes"] == [f"{repository}:/models:ro"]
    assert service["environment"]["DETSTACK_API_TOKEN"].startswith("${DETSTACK_API_TOKEN:?")
    assert service["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    script = service["command"][2]
    # Compose turns "$$" into "$": the container shell then sees the same script as docker run.
    assert script.replace("$$", "$") == container_command(config)[-1]
    assert TOKEN not in path.read_text()


def test_compose_file_never_overwrites_a_file_it_did_not_write(tmp_path):
    repository = write_echo_repository(tmp_path / "model_repository")
    theirs = tmp_path / "compose.yaml"
    theirs.write_text("services: {db: {image: postgres}}\n")
    with pytest.raises(Exception, match="not written by detstack"):
        write_compose_file(ServeConfig(str(repository), mode="container"), theirs)
    assert "postgres" in theirs.read_text()


def test_compose_file_path_that_is_a_folder_is_refused_with_a_message_naming_it(tmp_path):
    repository = write_echo_repository(tmp_path / "model_repository")
    folder = tmp_path / "compose.yaml"
    folder.mkdir()
    with pytest.raises(RepositoryError, match=r"compose\.yaml exists and was not written"):
        write_compose_file(ServeConfig(str(repository), mode="container"), folder)
    assert folder.is_dir()


def test_container_mode_passes_aws_variables_by_name_for_an_s3_repository():
    config = ServeConfig(
        "s3://models/prod", mode="container", s3_endpoint_url="http://10.0.0.5:9000"
    )
    command = container_command(config)
    assert "-v" not in command
    assert "AWS_SECRET_ACCESS_KEY" in command
    assert "--model-repository=s3://http://10.0.0.5:9000/models/prod" in command[-1]
