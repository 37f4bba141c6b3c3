"""One optimiser step: inputs, forward and backward of each micro-batch, the update.

A micro-batch whose loss is not finite on any rank is skipped by every rank together: its
gradients are dropped and the BN running statistics its forward wrote are put back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..config import ModelConfig
from ..inference.preprocess import normalize_batch
from ..ops.matcher import AnchorLabeler
from .config import TrainConfig
from .distributed import DistInfo, all_reduce_sum
from .losses import DetectionLoss
from .state import TrainState
from .threads import ThreadDataParallel

__all__ = ["TrainStep"]

Losses = dict[str, torch.Tensor]


class TrainStep:
    """Turns loader batches into optimiser steps on ``state``.

    ``net`` is what the forward runs through (the model, or its DDP wrapper); ``threads``
    splits a batch over CPU threads instead when given.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        state: TrainState,
        net: nn.Module,
        labeler: AnchorLabeler,
        dist: DistInfo,
        device: torch.device,
        amp_dtype: torch.dtype | None,
        threads: ThreadDataParallel | None = None,
    ) -> None:
        self.cfg, self.state, self.net, self.labeler = cfg, state, net, labeler
        self.dist, self.device, self.amp_dtype, self.threads = dist, device, amp_dtype, threads
        self.criterion = DetectionLoss(**vars(cfg.loss))
        config: ModelConfig = state.model.config  # type: ignore[assignment]
        self.preprocess = config.preprocess
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        # floating-point buffers = BN running statistics (and counters): restored on a skip
        self.bn_stats = [b for b in state.model.buffers() if b.is_floating_point()]

    def inputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Normalised images [N, 3, H, W] in the training memory format, boxes [M_i, 4], labels [M_i]."""
        pp = self.preprocess
        images = batch["images"].to(self.device, non_blocking=True)
        # The border the model is evaluated and deployed with: 0 outside each image's content.
        images = normalize_batch(images, batch["content_sizes"], pp.mean, pp.std)
        images = images.contiguous(memory_format=self.memory_format)
        boxes = [b.to(self.device) for b in batch["boxes"]]
        labels = [lb.to(self.device) for lb in batch["labels"]]
        return images, boxes, labels

    def loss(
        self, net: nn.Module, images: torch.Tensor, boxes: Sequence[torch.Tensor], labels: Sequence[torch.Tensor]
    ) -> Losses:
        """Anchor labels, forward and loss of ``images`` [N, 3, H, W] through ``net`` (the
        model, DDP or a thread's replica); scalar ``loss``, ``class_loss``, ``box_loss`` (and
        ``iou_loss`` when on)."""
        cls_t, box_t, num_pos = self.labeler(list(boxes), list(labels))
        autocast = (
            torch.autocast(self.device.type, dtype=self.amp_dtype)
            if self.amp_dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
            cls_out, box_out = net(images)
        cls_out = [c.float() for c in cls_out]
        box_out = [b.float() for b in box_out]
        return self.criterion(cls_out, box_out, cls_t, box_t, num_pos, self.labeler.anchors)

    def backward(self, batch: dict[str, Any], sync: bool) -> Losses | None:
        """Forward and backward of one micro-batch, gradients scaled by ``1 / grad_accum``;
        ``sync``: the last micro-batch before an update (DDP reduces gradients only then).

        Returns the losses, or None when the loss was not finite on some rank: then the
        gradients gathered so far are dropped, the BN statistics restored and the skip counted.
        """
        accum = self.cfg.grad_accum
        no_sync: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
        if self.dist.enabled and not sync:
            assert isinstance(self.net, DistributedDataParallel)  # the Trainer wraps the model when distributed
            no_sync = self.net.no_sync()
        with no_sync:
            inputs = self.inputs(batch)
            # a forward that ends in NaN has already written NaN into the BN running
            # statistics: keep a copy to put back if the step is skipped (a few KB)
            bn_saved = [b.clone() for b in self.bn_stats]
            if self.threads is not None:  # forward and backward, over the batch's shares
                losses = self.threads.forward_backward(self.loss, *inputs, grad_scale=1.0 / accum)
            else:
                losses = self.loss(self.net, *inputs)
            finite = all_reduce_sum(torch.isfinite(losses["loss"]).float(), self.dist)
            if finite.item() < self.dist.world_size:
                # A non-finite loss on any rank: every rank skips this step together.
                self.state.optimizer.zero_grad(set_to_none=True)
                with torch.no_grad():
                    for buf, saved in zip(self.bn_stats, bn_saved):
                        buf.copy_(saved)
                self.state.nonfinite_steps += 1
                return None
            if self.threads is None:
                self.state.scaler.scale(losses["loss"] / accum).backward()
        return losses

    def optimizer_step(self, time_fraction: float | None = None) -> None:
        """Apply the gathered gradients: unscale, clip, step, LR schedule, EMA, ``step += 1``.

        ``time_fraction``: the share of the time budget spent (the cosine of a budgeted run
        reaches its end when the time is up); None without a budget.
        """
        state = self.state
        state.scaler.unscale_(state.optimizer)
        if self.cfg.optim.clip_grad_norm > 0:
            params = [p for p in state.model.parameters() if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.clip_grad_norm)
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.optimizer.zero_grad(set_to_none=True)
        if time_fraction is not None:
            state.scheduler.schedule.time_fraction = time_fraction
        state.scheduler.step()
        state.ema.update(state.model)
        state.step += 1
