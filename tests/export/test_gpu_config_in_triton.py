"""The GPU flavour's config is accepted by the real Triton (2.51) config parser.

The embedded binary has no onnxruntime backend, so the model cannot load; what the test shows is
that Triton parses and normalises configs/gpu.pbtxt (inputs, outputs, KIND_GPU instances,
parameters, warmup) and fails only for want of the backend the GPU container provides.
"""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.triton]


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def test_gpu_flavour_parses_in_real_triton_and_lacks_only_the_onnxruntime_backend(
    tiny_model_repository,
):
    from serve._launch import find_tritonserver

    triton = find_tritonserver()
    http, grpc, metrics = free_ports(3)
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = f"{triton.libs}:{env.get('LD_LIBRARY_PATH', '')}"
    completed = subprocess.run(
        [
            str(triton.binary),
            f"--model-repository={tiny_model_repository}",
            "--model-config-name=gpu",
            f"--backend-directory={triton.python_backend.parent}",
            "--http-address=127.0.0.1",
            "--grpc-address=127.0.0.1",
            "--metrics-address=127.0.0.1",
            f"--http-port={http}",
            f"--grpc-port={grpc}",
            f"--metrics-port={metrics}",
            "--exit-on-error=true",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    log = completed.stdout + completed.stderr
    failures = [
        line for line in log.splitlines() if "failed to load 'my-detection-model' version" in line
    ]
    assert failures, log[-3000:]
    assert all(
        "unable to find backend library for backend 'onnxruntime'" in line for line in failures
    ), log[-3000:]
    assert completed.returncode != 0
