"""Exponential moving average of the weights, used for evaluation and export."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


class ModelEMA:
    """``ema = d * ema + (1 - d) * model`` after every optimiser step.

    ``d = decay * (1 - exp(-updates / warmup_steps))``: early on the average follows the model
    closely (the official 0.9998 would otherwise keep random-init weights for thousands of
    steps). Buffers (BN statistics) are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9998, warmup_steps: int = 2000) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.warmup_steps = warmup_steps
        self.updates = 0

    def current_decay(self) -> float:
        if self.warmup_steps <= 0:
            return self.decay
        return self.decay * (1.0 - math.exp(-self.updates / self.warmup_steps))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.current_decay()
        ema_params = dict(self.module.named_parameters())
        for name, p in model.named_parameters():
            e = ema_params[name]
            if e.is_floating_point():
                e.lerp_(p.detach().to(e.dtype), 1.0 - d)
            else:  # integer parameters (a quantizer's settings) are not averaged
                e.copy_(p.detach())
        ema_buffers = dict(self.module.named_buffers())
        for name, b in model.named_buffers():
            ema_buffers[name].copy_(b)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
