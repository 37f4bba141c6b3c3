"""Everything a training run is at one moment: weights, EMA, optimiser, schedule, counters, RNGs.

``TrainState.save`` writes it as a training checkpoint and ``restore`` reads it back, so a
resumed run continues bitwise where it stopped (engine/checkpoint.py does the file I/O).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import (
    TRAIN_FORMAT,
    CheckpointError,
    check_resumable,
    config_changes,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .ema import ModelEMA

__all__ = ["TrainState"]


@dataclass
class TrainState:
    """The mutable state of a run. ``batch_in_epoch`` counts the loader's batches of the
    current epoch (a resumed run skips that many); ``history`` holds every optimiser step's
    loss; ``elapsed_s`` the training seconds of earlier sessions (for time budgets)."""

    model: nn.Module
    ema: ModelEMA
    optimizer: torch.optim.Optimizer
    scheduler: Any  # optim.build_scheduler's LambdaLR with a ``schedule`` attribute
    scaler: torch.amp.GradScaler
    epoch: int = 0
    batch_in_epoch: int = 0
    step: int = 0
    best_metric: float = -1.0
    nonfinite_steps: int = 0
    history: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    world_size: int = 1  # processes of this session (torchrun); saved, so a resume can tell

    @property
    def position(self) -> tuple[int, int, int]:
        """(epoch, batch_in_epoch, step): where in the run this state is."""
        return (self.epoch, self.batch_in_epoch, self.step)

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and values only (loadable with ``weights_only=True``), RNGs included."""
        return {
            "format": TRAIN_FORMAT,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "step": self.step,
            "best_metric": self.best_metric,
            "nonfinite_steps": self.nonfinite_steps,
            "history": list(self.history),
            "elapsed_s": self.elapsed_s,
            "world_size": self.world_size,
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any], source: Path | str = "checkpoint") -> None:
        """Put every part of ``state`` back, the global RNGs last; ``source`` names it in errors."""
        try:
            self.model.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])  # progress only, not the run's length
            if "scaler" in state:
                self.scaler.load_state_dict(state["scaler"])
        except (KeyError, ValueError, RuntimeError) as err:
            first = str(err).strip().splitlines()[0][:300]
            raise CheckpointError(f"{source}: does not fit this training run ({first})") from err
        self.epoch, self.batch_in_epoch, self.step = state["epoch"], state["batch_in_epoch"], state["step"]
        self.best_metric = state["best_metric"]
        self.nonfinite_steps = state.get("nonfinite_steps", 0)
        self.history = list(state.get("history", []))
        self.elapsed_s = float(state.get("elapsed_s", 0.0))
        set_rng_state(state["rng"])

    def save(self, path: Path, config: dict[str, Any], class_names: Sequence[str]) -> None:
        """Write a training checkpoint (atomic; ``CheckpointError`` names the file and cause)."""
        state = self.state_dict()
        state["config"], state["class_names"] = config, list(class_names)
        save_checkpoint(path, state)

    def restore(
        self, path: Path, model: str, image_size: Any, class_names: Sequence[str], config: dict[str, Any]
    ) -> list[str]:
        """Read ``path`` after checking it is a run of this ``model``, image size and classes;
        returns the settings in which ``config`` (this run's) differs from the checkpoint's
        (``checkpoint.config_changes``)."""
        state = load_checkpoint(path)
        check_resumable(path, state, model, image_size, list(class_names))
        changes = config_changes(path, state.get("config") or {}, config)
        saved_world = int(state.get("world_size", self.world_size))  # older checkpoints: not known
        if saved_world != self.world_size:
            changes.append(_world_change(saved_world, self.world_size))
        self.load_state_dict(state, path)
        return changes


def _world_change(saved: int, now: int) -> str:
    """The note for a resume in another number of processes: nothing in the config changed,
    but the global batch did, and with it the epoch's length in steps (which the LR schedule's
    warm-up and cosine are laid over) and what the epoch's saved position means."""
    return (
        f"processes (torchrun --nproc_per_node): {saved} -> {now}: the global batch is {now}x batch_size, "
        f"not {saved}x, at the checkpoint's LR (restored), an epoch has another number of steps (the LR schedule is "
        "laid over the new count), and the rest of this epoch's images are approximate (some repeat or are left out)"
    )
