"""The pod's entrypoint script, run for real with ``sh`` and a stand-in ``tritonserver``.

The stand-in prints the arguments it was started with, one per line, so the tests see exactly
what Triton would get: the token read from the Secret's file in the restricted-API options, a
fresh random lock, and a refusal (with the Secret named) when the token is missing or unusable.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from serve._k8s import render_manifests
from serve._k8s_config import K8sConfig

pytestmark = pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX sh")

TOKEN = "k8s-test-token-0123456789abcdefXYZ"
CONFIG = K8sConfig("s3://my-bucket/model_repository", model="detector", token_secret="tok")


def _script(config: K8sConfig = CONFIG) -> str:
    (config_map,) = [d for d in render_manifests(config) if d["kind"] == "ConfigMap"]
    return config_map["data"]["entrypoint.sh"]


def _run(tmp_path: Path, token_bytes: bytes | None) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "tritonserver"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n', encoding="utf-8")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    script = tmp_path / "entrypoint.sh"
    script.write_text(_script(), encoding="utf-8")
    token_file = tmp_path / "token"
    if token_bytes is not None:
        token_file.write_bytes(token_bytes)
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "DETSTACK_API_TOKEN_FILE": str(token_file),
    }
    return subprocess.run(
        ["sh", str(script)], env=env, capture_output=True, text=True, timeout=30, check=False
    )


def test_the_entrypoint_passes_the_token_from_the_secret_file_to_tritonserver(tmp_path):
    # A file written with `kubectl create secret --from-file` often ends with a newline.
    result = _run(tmp_path, TOKEN.encode() + b"\n")
    assert result.returncode == 0, result.stderr
    arguments = result.stdout.splitlines()
    restricted = [a for a in arguments if a.startswith("--http-restricted-api=inference")]
    assert restricted == [
        "--http-restricted-api=inference,metadata,model-config,model-repository,statistics,"
        f"trace,logging:authorization=Bearer {TOKEN}"
    ]
    assert f"authorization=Bearer {TOKEN}" in " ".join(
        a for a in arguments if a.startswith("--grpc-restricted-protocol=inference")
    )
    assert "--model-repository=s3://my-bucket/model_repository" in arguments
    assert "--metrics-address=0.0.0.0" in arguments


def test_the_entrypoint_draws_a_new_lock_for_shared_memory_at_every_start(tmp_path):
    def lock() -> str:
        result = _run(tmp_path, TOKEN.encode())
        assert result.returncode == 0, result.stderr
        (argument,) = [
            a for a in result.stdout.splitlines() if a.startswith("--http-restricted-api=shared")
        ]
        value = argument.rpartition("=")[2]
        assert len(value) == 48 and all(c in "0123456789abcdef" for c in value)
        return value

    assert lock() != lock()


@pytest.mark.parametrize(
    ("token_bytes", "message"),
    [
        (None, "cannot read the API token"),
        (b"short-token", "has 11 characters, fewer than 16"),
        (b"token with spaces inside it", "visible ASCII"),
        (TOKEN.encode() + b"\r\n", "visible ASCII"),
        ("tökén-with-non-ascii-0123456".encode(), "visible ASCII"),
    ],
    ids=["missing", "short", "spaces", "crlf", "non-ascii"],
)
def test_the_entrypoint_refuses_an_unusable_token_and_names_the_secret(
    tmp_path, token_bytes, message
):
    result = _run(tmp_path, token_bytes)
    assert result.returncode == 64
    assert message in result.stderr
    assert "Secret 'tok'" in result.stderr
    assert result.stdout == ""  # tritonserver was never started
