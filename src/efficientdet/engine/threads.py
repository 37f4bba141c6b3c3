"""Data parallelism over threads of one process, for training on a CPU.

PyTorch splits each operator over the CPU's cores (intra-op parallelism). For EfficientDet that
scales poorly on a few cores: depthwise convolutions, squeeze-excite and the small maps of the
upper pyramid levels are too small to keep every core busy (measured on 2 cores: one process
with 2 threads trains 1.07 images/s, two 1-thread processes 1.53 in total). Splitting the batch
instead, each share run by its own single-threaded worker, keeps all cores busy, like DDP with
one process per core, but in one process: the weights, the optimiser state, the gradients'
sum and the runtime are not duplicated, so memory stays that of one process.

Semantics are those of DDP without SyncBN: each share's batch-norm layers normalise over that
share, gradients are the batch-size weighted sum of the shares' gradients, and the BN running
statistics are averaged over the shares after every step. Each share runs single-threaded in a
fixed order of reduction, so training stays deterministic.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

# loss_fn(module, images [n, 3, H, W], boxes (n lists of [Ni, 4]), labels) -> {"loss": scalar, ...}
LossFn = Callable[[nn.Module, torch.Tensor, Sequence[torch.Tensor], Sequence[torch.Tensor]], dict[str, torch.Tensor]]


def _single_thread() -> None:
    # Per thread: OpenMP's and MKL's thread counts are thread-local settings.
    torch.set_num_threads(1)


class ThreadDataParallel:
    """Runs forward + backward of a batch's shares on ``threads`` single-threaded workers.

    ``min_share``: fewer workers when a batch would give a share fewer images than that.
    The replicas share ``model``'s ``Parameter`` objects (no copies, no weight sync) and have
    their own buffers (BN running statistics), which ``forward_backward`` reconciles with the
    model's: copied in before, averaged back after. ``model`` stays the one to optimise,
    evaluate, checkpoint and average into the EMA.
    """

    def __init__(self, model: nn.Module, threads: int, min_share: int = 1) -> None:
        if threads < 2:
            raise ValueError(f"ThreadDataParallel needs at least 2 threads, got {threads}")
        self.model = model
        # images per share at least: BN needs 2 when the top pyramid level is 1x1
        self.min_share = max(1, min_share)
        shared = {id(p): p for p in model.parameters()}  # deepcopy keeps these, copies the rest
        self.replicas: list[nn.Module] = [model] + [
            copy.deepcopy(model, memo=dict(shared)) for _ in range(threads - 1)
        ]
        self._modules = [list(r.modules()) for r in self.replicas]
        self._buffers = [[b for b in r.buffers()] for r in self.replicas]
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="effdet-dp", initializer=_single_thread)

    @property
    def threads(self) -> int:
        return len(self.replicas)

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    @torch.no_grad()
    def _sync_in(self) -> None:
        """Replicas take the model's buffers and train/eval modes (they may have been reloaded)."""
        master_modules = self._modules[0]
        for modules, buffers in zip(self._modules[1:], self._buffers[1:]):
            for dst, src in zip(modules, master_modules):
                dst.training = src.training
            for dst_b, src_b in zip(buffers, self._buffers[0]):
                dst_b.copy_(src_b)

    @torch.no_grad()
    def _sync_out(self, used: int, weights: list[float]) -> None:
        """The model's floating buffers become the share-weighted mean of the replicas' ones."""
        for i, buf in enumerate(self._buffers[0]):
            if not buf.is_floating_point():
                continue  # num_batches_tracked: every replica counted the same step
            mean = buf.mul_(weights[0])
            for r in range(1, used):
                mean.add_(self._buffers[r][i], alpha=weights[r])

    def forward_backward(
        self,
        loss_fn: LossFn,
        images: torch.Tensor,
        boxes: Sequence[torch.Tensor],
        labels: Sequence[torch.Tensor],
        grad_scale: float = 1.0,
    ) -> dict[str, torch.Tensor]:
        """Loss of the whole batch; adds ``grad_scale`` x its gradient to the parameters' ``.grad``.

        Each share's loss is weighted by its share of the batch. When any share's loss is not
        finite, no gradient is added (the caller skips the step) and the returned loss is not
        finite either.
        """
        n = images.shape[0]
        used = max(1, min(self.threads, n // self.min_share))
        sizes = [n // used + (i < n % used) for i in range(used)]  # as torch.tensor_split
        bounds = [sum(sizes[:i]) for i in range(used + 1)]
        weights = [(bounds[i + 1] - bounds[i]) / n for i in range(used)]
        params = [p for p in self.model.parameters() if p.requires_grad]
        self._sync_in()

        def run(i: int) -> tuple[dict[str, torch.Tensor], Sequence[torch.Tensor | None] | None]:
            a, b = bounds[i], bounds[i + 1]
            losses = loss_fn(self.replicas[i], images[a:b], boxes[a:b], labels[a:b])
            if not bool(torch.isfinite(losses["loss"])):
                return losses, None
            grads = torch.autograd.grad(losses["loss"] * (weights[i] * grad_scale), params, allow_unused=True)
            return {k: v.detach() for k, v in losses.items()}, grads

        results = list(self.pool.map(run, range(used)))
        self._sync_out(used, weights)
        total = {k: sum(w * r[0][k].detach().float() for w, r in zip(weights, results)) for k in results[0][0]}
        if any(g is None for _, g in results):
            return total  # type: ignore[return-value]
        with torch.no_grad():
            for j, p in enumerate(params):
                parts = [part for _, g in results if g is not None and (part := g[j]) is not None]
                if not parts:
                    continue
                grad = parts[0].clone() if p.grad is None else p.grad.add_(parts[0])
                for part in parts[1:]:
                    grad.add_(part)
                p.grad = grad
        return total  # type: ignore[return-value]


def resolve_threads(setting: int | str, device: torch.device, distributed: bool, batch_size: int) -> int:
    """Worker threads for ``TrainConfig.data_parallel_threads`` (1: off).

    ``"auto"``: on a CPU, outside DDP, one per thread PyTorch would use (capped by the batch);
    GPUs and DDP ranks keep their own parallelism.
    """
    if setting == "auto":
        if device.type != "cpu" or distributed:
            return 1
        return max(1, min(torch.get_num_threads(), batch_size))
    threads = int(setting)
    if threads < 1:
        raise ValueError(f"data_parallel_threads must be 'auto' or >= 1, got {setting!r}")
    if threads > 1 and (device.type != "cpu" or distributed):
        raise ValueError("data_parallel_threads > 1 is for single-process CPU training (use DDP on GPUs)")
    return threads


__all__ = ["ThreadDataParallel", "resolve_threads"]
