"""``eval`` and ``predict`` under ``torchrun --nproc_per_node N -m efficientdet ...``.

Every process joins the group torchrun describes (gloo on CPUs, NCCL on GPUs, one GPU per local
rank), builds the same detector and takes its share of the inputs (``engine.sharding``);
rank 0 gathers the results and alone writes the merged files. Alone (no torchrun) nothing
changes.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: ``--help`` must not wait for torch
    from ..engine.distributed import DistInfo
    from .common import Runner

__all__ = ["add_dist_args", "build_runner_on_ranks", "is_first_rank", "join_ranks"]


def add_dist_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dist-timeout", type=float, default=600.0,
        help="under torchrun: seconds a process waits for the others before failing (600)",
    )  # fmt: skip


def is_first_rank() -> bool:
    """Whether this process is rank 0 of torchrun's group (or alone), before joining it: the
    warnings every rank would find alike (a missing input) are printed by it alone."""
    return int(os.environ.get("RANK", "0")) == 0


def join_ranks(args: argparse.Namespace) -> DistInfo:
    """Join torchrun's process group (no-op alone). Under torchrun on GPUs, ``args.device``
    becomes this process's GPU (``cuda:LOCAL_RANK``) unless it names one already."""
    from ..engine.distributed import DistInfo, init_distributed
    from .common import resolve_device

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo()
    if args.dist_timeout <= 0:
        raise ValueError(f"--dist-timeout {args.dist_timeout}: must be positive (seconds)")
    device = resolve_device(args.device)
    if device.type == "cuda" and device.index is None:
        device = device.__class__("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        args.device = str(device)
    if device.type == "cuda":
        import torch

        torch.cuda.set_device(device)  # NCCL's object collectives use the current device
    return init_distributed(device, timeout=args.dist_timeout)


def build_runner_on_ranks(args: argparse.Namespace, out: Path, info: DistInfo) -> Runner:
    """``build_runner`` on every rank; rank 0 first, so that one process exports a shared
    ONNX cache entry and the others find it (no two writers of one file).

    Where rank 0 fails (missing weights, a bad graph), it says so once and the others exit
    with the same status 2, silently: they waited on rank 0 and reported gloo's "Connection
    closed by peer" as their error."""
    from ..engine.sharding import broadcast_from_main
    from .common import build_runner

    if not info.enabled:
        return build_runner(args, out)
    if not info.is_main:
        if broadcast_from_main(None, info) is not None:
            raise SystemExit(2)  # rank 0 printed the error
        return build_runner(args, out)
    try:
        runner = build_runner(args, out)
    except Exception as err:  # not Ctrl-C: torchrun stops every rank then
        broadcast_from_main(f"{type(err).__name__}: {err}", info)
        raise
    broadcast_from_main(None, info)
    return runner
