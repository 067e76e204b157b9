"""Distributed training helpers: torchrun process groups (gloo on CPU, nccl on GPU) and model unwrapping.

Every helper is a no-op (or the single-process answer) outside an initialised process group, so the
trainers call them unconditionally.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "DistInfo",
    "all_reduce_mean",
    "barrier",
    "cleanup_distributed",
    "distributed_context",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "unwrap_model",
]


@dataclass(frozen=True)
class DistInfo:
    """Process-group facts for this process (``world_size == 1`` when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    initialized_here: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def unwrap_model(module: nn.Module) -> nn.Module:
    """Strip ``DistributedDataParallel`` / ``DataParallel`` / ``torch.compile`` wrappers."""
    while True:
        if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            module = module.module
        elif hasattr(module, "_orig_mod") and isinstance(module._orig_mod, nn.Module):
            module = module._orig_mod
        else:
            return module


def is_distributed() -> bool:
    """True inside an initialised process group with more than one rank."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0 (and in non-distributed runs)."""
    return get_rank() == 0


def init_distributed(backend: str | None = None, *, timeout_s: float = 1800.0, required: bool = False) -> DistInfo:
    """Join the process group described by torchrun's env vars (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``, ``MASTER_PORT``).

    Without those variables (or with ``WORLD_SIZE=1``) this is a no-op returning a single-process
    :class:`DistInfo`, unless ``required=True`` (then ``RuntimeError``). Backend: ``nccl`` when CUDA is
    available, else ``gloo``. On CUDA the process binds to ``cuda:<LOCAL_RANK>``. An existing process
    group is reused (``initialized_here=False``; :func:`cleanup_distributed` then leaves it alone).
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return DistInfo(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
            backend=str(dist.get_backend()),
            initialized_here=False,
        )
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        if required:
            raise RuntimeError("distributed=True but WORLD_SIZE is not set (launch with torchrun)")
        return DistInfo()
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this torch build")
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    kwargs: dict[str, Any] = {}
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
        kwargs["device_id"] = torch.device(f"cuda:{local_rank}")
    dist.init_process_group(
        backend=backend,
        init_method="env://",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
        **kwargs,
    )
    logger.info("joined process group: rank %d/%d (local %d), backend %s", rank, world_size, local_rank, backend)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend, initialized_here=True)


def barrier() -> None:
    """``dist.barrier()`` in a distributed run, no-op otherwise."""
    import torch.distributed as dist

    if is_distributed():
        if dist.get_backend() == "nccl" and torch.cuda.is_available():
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def all_reduce_mean(value: float | torch.Tensor, device: torch.device | None = None) -> float:
    """Mean of a scalar over all ranks (the value itself when not distributed)."""
    import torch.distributed as dist

    if not is_distributed():
        return float(value)
    t = torch.as_tensor(value, dtype=torch.float64, device=device or "cpu").detach().clone().reshape(1)
    if dist.get_backend() == "nccl":
        t = t.to(torch.device("cuda", torch.cuda.current_device()), torch.float32)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / dist.get_world_size()


def cleanup_distributed(info: DistInfo | None = None) -> None:
    """Destroy the process group if :func:`init_distributed` created it (``info=None``: if one exists)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    if info is not None and not info.initialized_here:
        return
    dist.destroy_process_group()


@contextlib.contextmanager
def distributed_context(backend: str | None = None, *, required: bool = False) -> Iterator[DistInfo]:
    """``with distributed_context() as info:`` = :func:`init_distributed` + :func:`cleanup_distributed`."""
    info = init_distributed(backend, required=required)
    try:
        yield info
    finally:
        cleanup_distributed(info)
