"""Optimiser with the official weight-decay rule, and the warmup + cosine schedule."""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn

from .config import OptimConfig


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv/linear weights only: not on BN, biases or BiFPN fusion weights.

    Decided by the owning module's type, not by parameter names.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            is_kernel = isinstance(module, (nn.Conv2d, nn.Linear)) and name == "weight"
            (decay if is_kernel else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def default_lr(cfg: OptimConfig, total_batch: int) -> float:
    """Linear scaling: official 0.08 per 64 images for SGD; 1e-3 per 16 images for AdamW."""
    if cfg.lr is not None:
        return cfg.lr
    if cfg.optimizer == "sgd":
        return 0.08 * total_batch / 64
    return 1e-3 * total_batch / 16


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    groups = parameter_groups(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; valid: sgd, adamw")


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, start_factor: float, min_factor: float) -> float:
    """Learning-rate factor at optimiser step ``step``: linear warmup, then cosine decay."""
    if warmup_steps > 0 and step < warmup_steps:
        return start_factor + (1.0 - start_factor) * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosine:
    """The LR factor at optimiser step ``step`` (a ``LambdaLR`` lambda): linear warmup, then
    cosine decay over the rest of the run.

    The run's length is ``total_steps``, or, under a time budget, whichever ends first: the
    trainer sets ``time_fraction`` (share of the budget used) before each step, so a budgeted run
    decays to ``min_factor`` when its time is up instead of stopping at a high LR partway down a
    schedule laid over ``epochs``. A callable object (not a lambda) so that ``LambdaLR`` keeps
    its state in checkpoints.
    """

    # What a checkpoint restores; the run's shape (warmup, length) comes from the current config.
    PROGRESS = ("time_fraction", "decay_start_fraction")

    def __init__(self, warmup_steps: int, total_steps: int, start_factor: float, min_factor: float) -> None:
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.start_factor = start_factor
        self.min_factor = min_factor
        self.time_fraction: float | None = None  # None: no time budget
        self.decay_start_fraction: float | None = None  # budget share used when warmup ended

    def __call__(self, step: int) -> float:
        factor = warmup_cosine(step, self.warmup_steps, self.total_steps, self.start_factor, self.min_factor)
        if self.time_fraction is None or step < self.warmup_steps:
            return factor
        if self.decay_start_fraction is None:
            self.decay_start_fraction = min(self.time_fraction, 0.5)
        start = self.decay_start_fraction
        progress = min(max((self.time_fraction - start) / max(1e-9, 1.0 - start), 0.0), 1.0)
        by_time = self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return min(factor, by_time)  # the schedule that is further along wins


class WarmupCosineLR(torch.optim.lr_scheduler.LambdaLR):
    """``LambdaLR`` over a :class:`WarmupCosine` whose checkpoints restore only its progress, so a
    run resumed with more ``epochs`` or ``max_steps`` follows the new, longer schedule."""

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: WarmupCosine) -> None:
        super().__init__(optimizer, schedule)

    @property
    def schedule(self) -> WarmupCosine:
        # LambdaLR types its lambdas as plain callables; __init__ gave it this one WarmupCosine
        return cast(WarmupCosine, self.lr_lambdas[0])

    def load_state_dict(self, state_dict: dict) -> None:
        state = dict(state_dict)
        state["lr_lambdas"] = [
            None if fn is None else {k: v for k, v in fn.items() if k in WarmupCosine.PROGRESS}
            for fn in state_dict["lr_lambdas"]
        ]
        super().load_state_dict(state)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int, total_steps: int
) -> WarmupCosineLR:
    """Warmup over ``cfg.warmup_epochs`` epochs, then cosine to the end (see :class:`WarmupCosine`)."""
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    return WarmupCosineLR(optimizer, WarmupCosine(warmup, total_steps, cfg.warmup_start_factor, cfg.min_lr_factor))
