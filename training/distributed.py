"""Multi-process training helpers: one process per device, started by ``torchrun``.

``torchrun`` sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``
in every process; :func:`init_distributed` reads them and joins the process group (NCCL on CUDA,
gloo on CPU). Without them it returns a single-process context and the same training code runs
unchanged. Only the main process (rank 0) evaluates and writes checkpoints and metrics; the
others wait at :meth:`DistContext.barrier`.

Example (two GPUs on one machine; add ``--nnodes``/``--node-rank``/``--rdzv-endpoint`` for
several machines)::

    torchrun --nproc-per-node 2 -m cli.main train data/shapes --epochs 8

    >>> context = init_distributed("auto")                          # doctest: +SKIP
    >>> context.rank, context.world_size, context.device            # doctest: +SKIP
    (0, 1, device(type='cpu'))
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

from detstack.errors import ConfigError

__all__ = ["DistContext", "init_distributed", "resolve_device"]

logger = logging.getLogger(__name__)

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a (possibly one-process) training job."""

    rank: int
    local_rank: int
    world_size: int
    device: Any  # torch.device
    backend: str | None  # None: not distributed

    @property
    def distributed(self) -> bool:
        """Whether a process group was initialised (``world_size`` > 1 under torchrun)."""
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        """Whether this process evaluates and writes files (rank 0)."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every process (no-op in one process)."""
        if self.distributed:
            import torch.distributed as dist

            if self.backend == "nccl":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def all_reduce_mean(self, tensor: Any) -> Any:
        """The mean of ``tensor`` over all processes (``tensor`` itself in one process)."""
        if not self.distributed:
            return tensor
        import torch.distributed as dist

        reduced = tensor.clone()
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        return reduced / self.world_size

    def broadcast_object(self, value: Any) -> Any:
        """Rank 0's ``value`` on every process."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def close(self) -> None:
        """Leave the process group (safe to call in one process)."""
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def resolve_device(requested: str, local_rank: int = 0) -> Any:
    """Turn ``auto``/``cpu``/``cuda``/``cuda:N``/``mps`` into a ``torch.device``.

    ``auto`` picks CUDA when available (this process's ``LOCAL_RANK`` GPU under torchrun),
    then CPU.

    Raises:
        ConfigError: the device does not exist on this machine.
    """
    import torch

    name = requested.strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {requested!r} requested but CUDA is not available here")
        index = int(name.split(":", 1)[1]) if ":" in name else local_rank
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"device cuda:{index} does not exist (this machine has "
                f"{torch.cuda.device_count()} CUDA devices)"
            )
        return torch.device("cuda", index)
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError("device 'mps' requested but MPS is not available here")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"unknown device {requested!r}; expected auto, cpu, cuda, cuda:N or mps")


def init_distributed(requested_device: str = "auto") -> DistContext:
    """Join the ``torchrun`` process group if there is one, and pick this process's device.

    Raises:
        ConfigError: only some of the torchrun variables are set, or the device is unusable.
    """
    present = [name for name in _ENV if name in os.environ]
    if present and len(present) != len(_ENV):
        missing = [name for name in _ENV if name not in os.environ]
        raise ConfigError(
            f"distributed environment is incomplete: {', '.join(present)} set but "
            f"{', '.join(missing)} missing; start with torchrun"
        )
    if not present or int(os.environ["WORLD_SIZE"]) <= 1:
        return DistContext(0, 0, 1, resolve_device(requested_device), None)

    import torch
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    local_rank = int(os.environ["LOCAL_RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    device = resolve_device(requested_device, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # Rank 0 evaluates and writes checkpoints while the others wait at a barrier: allow a
        # long validation on a large dataset before the wait counts as a failure.
        dist.init_process_group(
            backend=backend, init_method="env://", timeout=datetime.timedelta(hours=2)
        )
    logger.info("process %d of %d on %s (%s)", rank, world_size, device, backend)
    return DistContext(rank, local_rank, world_size, device, backend)
