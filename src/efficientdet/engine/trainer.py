"""The training loop: one process, or one per device under torchrun (DDP)."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..data.formats import read_dataset
from ..data.loaders import build_train_loader
from ..data.dataset import DetectionDataset
from ..data.transforms import TrainTransform
from ..inference.preprocess import normalize_batch
from ..factory import save_model
from efficientdet.engine.losses import DetectionLoss
from ..ops.anchors import anchors_for_config
from ..ops.matcher import AnchorLabeler
from ..weights.io import WeightsError
from .checkpoint import (
    TRAIN_FORMAT,
    CheckpointError,
    check_resumable,
    describe_write_error,
    load_checkpoint,
    remove_stale_temp_files,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import TrainConfig
from .distributed import DistInfo, all_reduce_sum, barrier, init_distributed
from .ema import ModelEMA
from .logger import MetricsLogger, plot_curves
from .optim import build_optimizer, build_scheduler, default_lr
from .setup import build_train_model, resolve_amp_dtype, resolve_device
from .threads import ThreadDataParallel, resolve_threads


class TrainingDiverged(RuntimeError):
    """Too many non-finite losses in a row; a checkpoint was written before raising."""


class Trainer:
    """Builds data, model, optimiser from a ``TrainConfig``; ``fit()`` trains and validates.

    ``history`` keeps every optimiser step's loss (the resume test compares them).
    """

    def __init__(self, cfg: TrainConfig, log: Callable[[str], None] = print, progress: bool = True) -> None:
        self.cfg = cfg
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = resolve_device(cfg.device, local_rank)
        self.dist: DistInfo = init_distributed(self.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.log = log if self.dist.is_main else (lambda _msg: None)
        self.progress = progress and self.dist.is_main
        self.output = Path(cfg.output)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        torch.manual_seed(cfg.seed)  # same initial weights on every rank

        kw: dict[str, Any] = {"allow_outside_root": cfg.data.allow_outside_root}
        self.train_index = read_dataset(cfg.data.train, **kw)
        self.val_index = read_dataset(cfg.data.val, **kw) if cfg.data.val else None
        self.class_names = self.train_index.class_names
        self.amp_dtype = resolve_amp_dtype(cfg.amp, self.device)
        model = build_train_model(cfg, self.class_names, self.device, self.dist.enabled, self.amp_dtype)
        self.model_config = model.config
        assert self.model_config is not None
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.model = model
        self.ema = ModelEMA(model, cfg.optim.ema_decay, cfg.optim.ema_warmup_steps)
        self.ema.module.config, self.ema.module.class_names = model.config, model.class_names
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp: nn.Module = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        else:
            self.ddp = model
        threads = resolve_threads(cfg.data_parallel_threads, self.device, self.dist.enabled, cfg.batch_size)
        # BN of a share of 1 image fails when the top level's map is 1x1 (small image sizes)
        top = min(self.model_config.image_size) // self.model_config.max_stride
        self._bn_stats = [b for b in model.buffers() if b.is_floating_point()]
        self.threads = ThreadDataParallel(model, threads, min_share=2 if top <= 1 else 1) if threads > 1 else None

        size = self.model_config.image_size
        transform = TrainTransform(size, cfg.data.scale_range, cfg.data.hflip, cfg.data.photometric)
        dataset = DetectionDataset(
            self.train_index, transform=transform, max_pixels=self.model_config.preprocess.max_input_pixels
        )
        self.loader, self.seeded, self.sampler = build_train_loader(
            dataset, cfg.batch_size, cfg.data.workers, cfg.seed, self.dist.rank, self.dist.world_size,
            pin_memory=self.device.type == "cuda",
        )  # fmt: skip
        if len(self.loader) == 0:
            # Nothing to learn from: stop now rather than run empty epochs.
            raise ValueError(
                f"{cfg.data.train}: no usable training images ({len(self.train_index)} records; "
                f"{len(self.train_index.skipped)} skipped or repaired, see the warnings above)"
            )
        self.steps_per_epoch = max(1, math.ceil(len(self.loader) / cfg.grad_accum))
        self.total_steps = self.steps_per_epoch * cfg.epochs
        if cfg.max_steps:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        lr = default_lr(cfg.optim, cfg.batch_size * cfg.grad_accum * self.dist.world_size)
        self.optimizer = build_optimizer(model, cfg.optim, lr)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, self.steps_per_epoch, self.total_steps)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        anchors = anchors_for_config(self.model_config.anchors, size).to(self.device)
        self.labeler = AnchorLabeler(anchors)
        self.criterion = DetectionLoss(**vars(cfg.loss))

        self.epoch = 0
        self.batch_in_epoch = 0
        self.step = 0
        self.best_metric = -1.0
        self.nonfinite_steps = 0
        self.bad_batches = 0
        self.history: list[float] = []
        # training time so far, across resumes: a time budget covers the whole run
        self.elapsed_s = 0.0
        self._clock: tuple[float, float] | None = None  # (wall time, elapsed_s) when fit() began
        self.budget_used = 0.0  # share of cfg.time_budget_minutes spent, as all ranks agree
        self.stop_requested: str | None = None
        self._stop_at_step: int | None = None
        self._last_save = time.time()
        self._saved_at: tuple[int, int, int] | None = None  # (epoch, batch, step) of last.ckpt
        if self.dist.is_main:
            for stale in remove_stale_temp_files(self.output):
                self.log(f"removed {stale}: a temp file of an interrupted save")
        self._maybe_resume()
        self.metrics = MetricsLogger(self.output, self.dist.is_main, self.step, self.epoch)
        if self.metrics.dropped_rows:
            self.log(f"{self.metrics.path}: dropped {self.metrics.dropped_rows} rows logged after the checkpoint")

    # -- set-up helpers -------------------------------------------------------------------
    def _resume_path(self) -> Path | None:
        """The checkpoint to resume from, or None for a new run.

        ``resume``: True / "auto": ``output/last.ckpt`` when it exists; a path: that file. A
        worker that torchrun restarted (``--max-restarts``, TORCHELASTIC_RESTART_COUNT > 0)
        always resumes from ``output/last.ckpt`` when there is one: starting over would
        overwrite the run's checkpoints with a fresh run.
        """
        resume = self.cfg.resume
        restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
        if not resume and restarts > 0:
            self.log(f"torchrun restart {restarts}: resuming automatically")
            resume = "auto"
        if not resume:
            return None
        if resume is True or str(resume).lower() == "auto":
            path = self.output / "last.ckpt"
            if not path.exists():
                self.log(f"no checkpoint at {path}: starting a new run")
                return None
            return path
        return Path(str(resume))  # an explicit file must exist: load_checkpoint says if not

    def _maybe_resume(self) -> None:
        path = self._resume_path()
        if path is None:
            return
        state = load_checkpoint(path)
        check_resumable(path, state, self.model_config.name, self.model_config.image_size, self.class_names)
        try:
            self.model.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])  # progress only, not the run's length
            if "scaler" in state:
                self.scaler.load_state_dict(state["scaler"])
        except (KeyError, ValueError, RuntimeError) as err:
            first = str(err).strip().splitlines()[0][:300]
            raise CheckpointError(f"{path}: does not fit this training run ({first})") from err
        self.epoch, self.batch_in_epoch, self.step = state["epoch"], state["batch_in_epoch"], state["step"]
        self.best_metric = state["best_metric"]
        self.nonfinite_steps = state.get("nonfinite_steps", 0)
        self.history = list(state.get("history", []))
        self.elapsed_s = float(state.get("elapsed_s", 0.0))
        set_rng_state(state["rng"])
        self._saved_at = (self.epoch, self.batch_in_epoch, self.step)
        self.log(f"resumed from {path}: epoch {self.epoch}, step {self.step}")

    # -- checkpoints ----------------------------------------------------------------------
    def save(self, name: str = "last") -> Path | None:
        """Write ``{name}.ckpt`` (full training state) and ``{name}.safetensors`` (EMA weights)."""
        if not self.dist.is_main:
            return None
        state = {
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
            "elapsed_s": self._elapsed(),
            "rng": rng_state(),
            "config": self.cfg.to_dict(),
            "class_names": list(self.class_names),
        }
        path = self.output / f"{name}.ckpt"
        save_checkpoint(path, state)  # first: the resume point matters most
        self._last_save = time.time()
        if name == "last":
            self._saved_at = (self.epoch, self.batch_in_epoch, self.step)
        self._write_ema(self.output / f"{name}.safetensors")
        return path

    def _write_ema(self, path: Path) -> None:
        """The EMA weights as ``.safetensors`` (atomic too: on errors the previous file stays)."""
        try:
            save_model(self.ema.module, path)
        except WeightsError as err:
            raise CheckpointError(describe_write_error(path, err.__cause__ or err, "the EMA weights")) from err

    # -- one optimiser step -----------------------------------------------------------------
    def _inputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Normalised images [N, 3, H, W] in the training memory format, boxes, labels."""
        pp = self.model_config.preprocess
        images = batch["images"].to(self.device, non_blocking=True)
        # The border the model is evaluated and deployed with: 0 outside each image's content.
        images = normalize_batch(images, batch["content_sizes"], pp.mean, pp.std)
        images = images.contiguous(memory_format=self.memory_format)
        boxes = [b.to(self.device) for b in batch["boxes"]]
        labels = [lb.to(self.device) for lb in batch["labels"]]
        return images, boxes, labels

    def _loss(
        self, net: nn.Module, images: torch.Tensor, boxes: Sequence[torch.Tensor], labels: Sequence[torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Anchor labels, forward and loss of ``images`` through ``net`` (the model, DDP or a replica)."""
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
        return self.criterion(cls_out, box_out, cls_t, box_t, num_pos)

    def _elapsed(self) -> float:
        """Seconds of training so far in this run, earlier (resumed-from) sessions included."""
        if self._clock is None:
            return self.elapsed_s
        start, base = self._clock
        return base + time.time() - start

    def _optimizer_step(self) -> None:
        self.scaler.unscale_(self.optimizer)
        if self.cfg.optim.clip_grad_norm > 0:
            params = [p for p in self.model.parameters() if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        budget = self.cfg.time_budget_minutes
        if budget:
            # Ranks must agree on it (same LR, same stop step): the mean over ranks.
            used = torch.tensor([self._elapsed() / (budget * 60)], device=self.device)
            self.budget_used = float(all_reduce_sum(used, self.dist)) / self.dist.world_size
            # budget-aware schedule: the cosine reaches its end when the time is up
            self.scheduler.schedule.time_fraction = self.budget_used
        self.scheduler.step()
        self.ema.update(self.model)
        self.step += 1

    def train_epoch(self) -> str | None:
        """Train until the epoch ends (None) or a stop reason ("max_steps", "time", "signal")."""
        cfg = self.cfg
        self.ddp.train()
        if cfg.freeze_backbone:
            self.model.backbone.eval()  # frozen BN statistics too
        self.seeded.set_epoch(self.epoch)
        self.sampler.set_epoch(self.epoch)
        self.sampler.skip(self.batch_in_epoch * cfg.batch_size)
        iterator: Any = self.loader
        if self.progress:
            from tqdm import tqdm

            iterator = tqdm(self.loader, desc=f"epoch {self.epoch + 1}/{cfg.epochs}", dynamic_ncols=True, leave=False)
        accum, consecutive_bad, t0, seen = 0, 0, time.perf_counter(), 0
        for batch in iterator:
            self.batch_in_epoch += 1
            if batch["images"].shape[0] == 0:
                self.bad_batches += 1  # every image of the batch was unreadable (warned)
                continue
            sync = accum + 1 == cfg.grad_accum
            no_sync = self.ddp.no_sync() if self.dist.enabled and not sync else contextlib.nullcontext()
            with no_sync:
                inputs = self._inputs(batch)
                # a forward that ends in NaN has already written NaN into the BN running
                # statistics: keep a copy to put back if the step is skipped (a few KB)
                bn_saved = [b.clone() for b in self._bn_stats]
                if self.threads is not None:  # forward and backward, over the batch's shares
                    losses = self.threads.forward_backward(self._loss, *inputs, grad_scale=1.0 / cfg.grad_accum)
                else:
                    losses = self._loss(self.ddp, *inputs)
                finite = all_reduce_sum(torch.isfinite(losses["loss"]).float(), self.dist)
                if finite.item() < self.dist.world_size:
                    # A non-finite loss on any rank: every rank skips this step together.
                    self.optimizer.zero_grad(set_to_none=True)
                    with torch.no_grad():
                        for buf, saved in zip(self._bn_stats, bn_saved):
                            buf.copy_(saved)
                    accum = 0
                    self.nonfinite_steps += 1
                    consecutive_bad += 1
                    self.log(f"warning: non-finite loss at step {self.step}, skipped ({self.nonfinite_steps} so far)")
                    if consecutive_bad >= cfg.max_consecutive_nonfinite:
                        path = self.save("last")
                        raise TrainingDiverged(
                            f"{consecutive_bad} non-finite losses in a row at step {self.step}: training "
                            f"diverged. Checkpoint saved to {path}. Lower optim.lr or check the data."
                        )
                    continue
                if self.threads is None:
                    self.scaler.scale(losses["loss"] / cfg.grad_accum).backward()
            accum += 1
            seen += batch["images"].shape[0]
            if accum < cfg.grad_accum:
                continue
            accum, consecutive_bad = 0, 0
            self._optimizer_step()
            loss = float(losses["loss"].detach())
            self.history.append(loss)
            if self.step % cfg.log_every == 0 or self.step == 1:
                ips = seen * self.dist.world_size / max(time.perf_counter() - t0, 1e-9)
                lr = self.optimizer.param_groups[0]["lr"]
                values = {k: float(v.detach()) for k, v in losses.items()}
                self.metrics.log("train", self.epoch, self.step, {**values, "lr": lr, "images_per_s": ips})
                if self.progress:
                    iterator.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{ips:.1f}")
            if cfg.checkpoint_every_steps and self.step % cfg.checkpoint_every_steps == 0:
                self.save("last")
            if cfg.max_steps and self.step >= cfg.max_steps:
                return "max_steps"
            if cfg.time_budget_minutes and self.budget_used >= 1.0:
                return "time"
            if self.stop_requested:
                return "signal"
            if self._stop_at_step is not None and self.step >= self._stop_at_step:
                return "stopped"
        return None

    # -- validation -----------------------------------------------------------------------
    def validate(self) -> dict[str, float] | None:
        if self.val_index is None or not self.dist.is_main:
            return None
        from ..evaluation.run import evaluate

        result = evaluate(self.ema.module, self.val_index, batch_size=self.cfg.batch_size, progress=False)
        return {k: result.stats[k] for k in ("AP", "AP50", "AP75")}

    # -- the whole run --------------------------------------------------------------------
    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.stop_requested = signal.Signals(signum).name
        self.log(f"{self.stop_requested} received: finishing this step, saving a checkpoint")

    def fit(self, stop_at_step: int | None = None) -> str:
        """Train to the end (or a stop); returns why it stopped: "done", "max_steps", "time",
        "signal", "stopped". ``stop_at_step`` interrupts like a signal at that optimiser step
        (the schedule still assumes the full run), for tests and notebooks."""
        cfg = self.cfg
        self._stop_at_step = stop_at_step
        # the time budget covers the whole run: a resumed run gets what its earlier sessions left
        self._clock = (time.time(), self.elapsed_s)
        old_handlers = {}
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                old_handlers[sig] = signal.signal(sig, self._on_signal)
        except ValueError:  # not the main thread: the caller handles signals
            old_handlers = {}
        reason = "done"
        try:
            while self.epoch < cfg.epochs:
                stop = self.train_epoch()
                if stop is not None:
                    reason = stop
                    break
                self.epoch += 1
                self.batch_in_epoch = 0
                due = cfg.eval_every and (self.epoch % cfg.eval_every == 0 or self.epoch == cfg.epochs)
                metrics = self.validate() if due else None
                if metrics is not None:
                    self.metrics.log("val", self.epoch, self.step, metrics)
                    self.log(f"epoch {self.epoch}: AP {metrics['AP']:.4f}  AP50 {metrics['AP50']:.4f}")
                    if metrics["AP"] > self.best_metric:
                        self.best_metric = metrics["AP"]
                        self.save("best")
                if self.epoch == cfg.epochs or time.time() - self._last_save >= cfg.checkpoint_min_interval_s:
                    self.save("last")
                barrier(self.dist)
            if reason != "done" and self._saved_at != (self.epoch, self.batch_in_epoch, self.step):
                self.save("last")  # unless this very state was just saved
            if self.dist.is_main and self.val_index is None:
                self._write_ema(self.output / "best.safetensors")  # no validation: best = last
        finally:
            self.elapsed_s, self._clock = self._elapsed(), None
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            self.metrics.close()
        if self.dist.is_main and self.metrics.path.exists():
            plot_curves(self.metrics.path, self.output / "training_curves.png")
        return reason
