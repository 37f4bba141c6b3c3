"""Work split over the processes torchrun started: disjoint shares, gathering to rank 0.

``eval``, ``predict`` and validation during DDP training use the same rule: the items (in their
sorted, deterministic order) are dealt round-robin, item ``i`` to rank ``i % world_size``, so
every rank gets a share within one item of the others and none idles. Results travel with
``torch.distributed``'s object collectives (gloo on CPUs, NCCL on GPUs); the process group's
timeout (``init_distributed(timeout=...)``) bounds every wait, so a rank that dies turns into
:class:`ShardingError` on the others (torchrun then stops the group) instead of a hang.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from .distributed import DistInfo

__all__ = [
    "ShardingError",
    "broadcast_from_main",
    "broadcast_module",
    "check_shardable",
    "gather_to_main",
    "merge_in_order",
    "shard_positions",
]

T = TypeVar("T")


class _Ordered(Protocol):
    """A sortable position: an int, or a tuple of them (``predict`` orders by (kind, input, frame))."""

    def __lt__(self, other: Any, /) -> bool: ...


K = TypeVar("K", bound=_Ordered)


class ShardingError(RuntimeError):
    """A collective across the ranks failed: a rank died, or did not answer within the timeout."""


def check_shardable(count: int, info: DistInfo, what: str = "images") -> None:
    """Refuse a split that would leave a rank without work (``--nproc_per_node`` too large)."""
    if info.enabled and count < info.world_size:
        raise ValueError(
            f"{info.world_size} processes (torchrun --nproc_per_node) but only {count} {what}: "
            f"every process needs at least one; run with --nproc_per_node {max(1, count)} or fewer"
        )


def shard_positions(count: int, info: DistInfo) -> list[int]:
    """Positions (into the sorted items) this rank handles: ``rank, rank + world, ...``."""
    return list(range(info.rank, count, info.world_size))


def _collective_failed(what: str, info: DistInfo, err: BaseException) -> ShardingError:
    first = (str(err).splitlines() or [""])[0][:200]
    return ShardingError(
        f"rank {info.rank} of {info.world_size}: {what} failed ({type(err).__name__}: {first}); "
        "another process died or did not answer within the timeout; nothing was written as complete"
    )


def gather_to_main(obj: T, info: DistInfo) -> list[T] | None:
    """Every rank's ``obj`` on rank 0 (a list by rank); None on the other ranks. Alone: ``[obj]``."""
    if not info.enabled:
        return [obj]
    out: list[Any] | None = [None] * info.world_size if info.is_main else None
    try:
        dist.gather_object(obj, out, dst=0)
    except (RuntimeError, ValueError) as err:  # gloo/NCCL raise DistBackendError (a RuntimeError)
        raise _collective_failed("gathering the results to rank 0", info, err) from err
    return out


def broadcast_from_main(obj: T | None, info: DistInfo) -> T:
    """Rank 0's ``obj`` on every rank (the others pass anything, e.g. None)."""
    if not info.enabled:
        return obj  # type: ignore[return-value]
    box = [obj]
    try:
        dist.broadcast_object_list(box, src=0)
    except (RuntimeError, ValueError) as err:
        raise _collective_failed("receiving rank 0's result", info, err) from err
    return box[0]  # type: ignore[return-value]


def broadcast_module(module: nn.Module, info: DistInfo) -> None:
    """Copy rank 0's parameters and buffers into ``module`` on every rank, in place.

    Used before sharded validation: DDP averages gradients, but BN running statistics (and so
    an EMA of them) are each rank's own; the ranks must score one and the same model."""
    if not info.enabled:
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def merge_in_order(shards: Sequence[Sequence[tuple[K, T]]]) -> list[T]:
    """``(position, item)`` pairs from every rank -> the items in position order."""
    pairs = sorted((p for shard in shards for p in shard), key=lambda pair: pair[0])
    return [item for _, item in pairs]
