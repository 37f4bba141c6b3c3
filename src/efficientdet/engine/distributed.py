"""torch.distributed set-up as torchrun starts it (NCCL on GPUs, gloo on CPUs)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.rendezvous import rendezvous


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device, timeout: float | None = None) -> DistInfo:
    """Join the process group torchrun described in the environment (no-op when alone).

    ``timeout``: seconds any collective may wait for the other ranks (PyTorch's default,
    10 min for NCCL / 30 min for gloo, when None); a dead rank then fails the others."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        wait = timedelta(seconds=timeout) if timeout else None
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
        if restart is None:  # another launcher: the plain env:// set-up
            dist.init_process_group(backend=backend, timeout=wait)
        else:
            # torchrun keeps one store for all attempts of a --max-restarts run, and the
            # process group's keys (each rank's address) carry no attempt number: restarted
            # workers would read the dead workers' addresses and fail to connect (seen with
            # gloo, torch 2.14). A prefix per attempt keeps the attempts apart.
            store, rank, world = next(rendezvous("env://"))
            attempt_store = dist.PrefixStore(f"efficientdet/attempt_{restart}", store)
            dist.init_process_group(backend=backend, store=attempt_store, rank=rank, world_size=world, timeout=wait)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world)


def all_reduce_sum(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
