"""The served model imports detstack however detstack was installed (editable included)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = [pytest.mark.triton, pytest.mark.slow]

_SCRIPT = textwrap.dedent(
    """
    import io, json, sys
    from PIL import Image
    from serve import ServeConfig, TritonServer
    from client import DetectionClient

    config = ServeConfig(sys.argv[1], host="127.0.0.1", http_port=0, grpc_port=0,
                         metrics_port=0, startup_timeout_s=180.0, exit_timeout_s=3)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (128, 128, 128)).save(buffer, format="PNG")
    with TritonServer(config) as server:
        with DetectionClient(server.endpoints.grpc) as client:
            (result,) = client.predict_arrays([buffer.getvalue()])
    print(json.dumps({"version": result.model_version, "count": len(result)}))
    """
)


def test_an_encoded_request_is_answered_when_serve_runs_outside_the_source_tree(
    tiny_model_repository, tmp_path
):
    # Regression: a process whose sys.path lacks the source tree (an editable install found
    # through its .pth hook, as `detstack serve` from a console script) started a python
    # backend that could not import detstack: every encoded request failed.
    completed = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(tiny_model_repository)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    answer = json.loads(completed.stdout.strip().splitlines()[-1])
    assert answer["version"] == "1"
