"""Multi-process training: environment handling, and a real 2-process torchrun run on gloo."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from detstack.errors import ConfigError
from training.checkpoint import load_checkpoint
from training.distributed import init_distributed, resolve_device


def test_without_torchrun_variables_training_runs_as_one_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    context = init_distributed("cpu")
    assert (context.rank, context.world_size, context.distributed) == (0, 1, False)
    assert context.is_main
    context.barrier()  # no-op, must not hang
    context.close()


def test_incomplete_torchrun_environment_names_the_missing_variables(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(ConfigError, match="WORLD_SIZE, LOCAL_RANK missing"):
        init_distributed("cpu")


@pytest.mark.parametrize(
    ("device", "message"),
    [("tpu", "unknown device 'tpu'"), ("cuda:7", "cuda")],
)
def test_unusable_device_is_a_config_error(device, message):
    with pytest.raises(ConfigError, match=message):
        resolve_device(device)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
@pytest.mark.distributed
def test_two_cpu_processes_train_with_ddp_and_only_rank_zero_writes(synthetic_dataset, tmp_path):
    output = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", "1", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
        "-m", "cli.main", "-q", "train", str(synthetic_dataset),
        "--model", "tiny", "--epochs", "2", "--batch-size", "2", "--workers", "0",
        "--device", "cpu", "--val-fraction", "0.25", "--output", str(output),
    ]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env=environment, check=False
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    checkpoint = load_checkpoint(output / "last.pt")
    assert checkpoint.epoch == 2
    assert checkpoint.extra["world_size"] == 2
    assert not any(key.startswith("module.") for key in checkpoint.model_state)
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]  # one writer: no duplicated lines
    assert "AP50" in records[-1]["val"]
    assert completed.stdout.count("last checkpoint:") == 1
    assert completed.stdout.count("status       usable") == 1  # the data report, printed once
