"""Activation checkpointing for training the big variants in less memory.

The backbone's stages and the BiFPN cells keep only their inputs in the forward pass and are
recomputed in the backward pass (``torch.utils.checkpoint``, non-reentrant). Gradients are
those of the plain step: the RNG state (dropout, drop-path) is replayed, and BatchNorm's running
statistics are frozen during the recomputation, which would otherwise update them twice per
step (why timm's own ``set_grad_checkpointing``, which cannot do that, is not used).
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["checkpointed_call", "set_grad_checkpointing"]


@runtime_checkable
class _CellCheckpointing(Protocol):
    """A feature network that checkpoints its own cells when told to (``bifpn.FeatureNetwork``,
    not imported here: bifpn imports this module)."""

    grad_checkpointing: bool


@contextlib.contextmanager
def _frozen_bn_stats(module: nn.Module) -> Iterator[None]:
    """BN layers of ``module`` leave running mean/var and their batch count unchanged: momentum
    0 keeps ``(1 - m) * running + m * batch`` at ``running``."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, count) in zip(norms, saved):
            m.momentum = momentum
            if count is not None and m.num_batches_tracked is not None:
                m.num_batches_tracked.copy_(count)


def checkpointed_call(module: nn.Module, fn: Any, *args: Any) -> Any:
    """``fn(*args)`` (``fn`` runs ``module``) without keeping its activations, when training
    with gradients; a plain call otherwise (eval, ``no_grad``)."""
    if not (module.training and torch.is_grad_enabled()):
        return fn(*args)
    contexts = lambda: (contextlib.nullcontext(), _frozen_bn_stats(module))  # noqa: E731
    return checkpoint(fn, *args, use_reentrant=False, context_fn=contexts)


def _checkpointed_forward(self: nn.Module, *args: Any) -> Any:
    return checkpointed_call(self, lambda *a: type(self).forward(self, *a), *args)


def set_grad_checkpointing(model: nn.Module, enable: bool = True) -> None:
    """Checkpoint ``model.backbone.blocks`` (timm's stages) and ``model.feature_net``'s cells.

    In place; parameter names, weights and outputs are unchanged (an instance-level
    ``forward`` on each stage: copies, e.g. the EMA, get it rebound to themselves)."""
    blocks = getattr(model.backbone, "blocks", None)
    if blocks is None:
        raise ValueError(f"grad_checkpointing: backbone {type(model.backbone).__name__} has no 'blocks' stages")
    feature_net = model.feature_net
    if not isinstance(feature_net, _CellCheckpointing):
        raise TypeError(f"grad_checkpointing: feature_net {type(feature_net).__name__} has no 'grad_checkpointing'")
    for stage in blocks:
        if enable:
            stage.forward = types.MethodType(_checkpointed_forward, stage)
        elif "forward" in vars(stage):
            del stage.forward
    feature_net.grad_checkpointing = enable
