"""The training loop: one process, or one per device under torchrun (DDP).

Set-up is in engine/setup.py, the run's state (and its checkpoints) in engine/state.py, one
optimiser step in engine/step.py; this module runs epochs, validation, saving and stopping.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.common import warn_issue
from ..data.formats import read_split
from ..data.records import data_issues_shown
from ..factory import save_model
from ..fs import atomic_write
from ..ops.anchors import anchors_for_config
from ..ops.matcher import AnchorLabeler
from ..weights.io import WeightsError
from .anchor_check import anchor_warning
from .checkpoint import CheckpointError, describe_write_error, remove_stale_temp_files
from .config import TrainConfig
from .distributed import DistInfo, barrier, init_distributed
from .logger import MetricsLogger, plot_curves
from .progress import epoch_bar, show_minutes
from .setup import (
    build_train_loader_for,
    build_train_model,
    build_train_state,
    check_has_images,
    check_val_classes,
    count_steps,
    resolve_amp_dtype,
    resolve_device,
    resume_path,
    unused_settings,
    val_overlap_warning,
    validation_tile,
)
from .sharding import broadcast_module, check_shardable
from .state import TrainState
from .step import TrainStep
from .stopping import StopSignals
from .threads import ThreadDataParallel, resolve_threads


class TrainingDiverged(RuntimeError):
    """Too many non-finite losses in a row; a checkpoint was written before raising."""


def _state_attr(name: str) -> Any:
    """A Trainer attribute that reads and writes ``TrainState.<name>`` (the public names
    predate TrainState: ``trainer.step``, ``trainer.model``, ...)."""
    return property(lambda self: getattr(self.state, name), lambda self, value: setattr(self.state, name, value))


class Trainer:
    """Builds data, model, optimiser from a ``TrainConfig``; ``fit()`` trains and validates.

    ``history`` keeps every optimiser step's loss (the resume test compares them). Data
    issues met while loading (unreadable images) are warned once per run as
    :class:`~efficientdet.data.records.DataIssue`, however many epochs and workers see them.
    """

    model = _state_attr("model")
    ema = _state_attr("ema")
    optimizer = _state_attr("optimizer")
    scheduler = _state_attr("scheduler")
    scaler = _state_attr("scaler")
    epoch = _state_attr("epoch")
    batch_in_epoch = _state_attr("batch_in_epoch")
    step = _state_attr("step")
    best_metric = _state_attr("best_metric")
    nonfinite_steps = _state_attr("nonfinite_steps")
    history = _state_attr("history")
    elapsed_s = _state_attr("elapsed_s")

    def __init__(self, cfg: TrainConfig, log: Callable[[str], None] = print, progress: bool = True) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
        self.dist: DistInfo = init_distributed(self.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.log = log if self.dist.is_main else (lambda _msg: None)
        self.progress = progress and self.dist.is_main
        self.output = Path(cfg.output)
        # decided before the data and model are built: a refused output folder fails fast
        self._resume_from = resume_path(cfg, self.output, self.log)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        torch.manual_seed(cfg.seed)  # same initial weights on every rank

        kw: dict[str, Any] = {"allow_outside_root": cfg.data.allow_outside_root}
        # a VOC or YOLO folder with splits gives its train / val split (eval's default too)
        with data_issues_shown(self.dist.is_main):  # every rank reads the same files: warned once
            self.train_index = read_split(cfg.data.train, "train", **kw)
            check_has_images(self.train_index, cfg.data.train)
            self.val_index = read_split(cfg.data.val, "val", **kw) if cfg.data.val else None
        if self.val_index is not None:  # validation is sharded: every rank needs an image
            check_shardable(len(self.val_index), self.dist, f"validation images in {cfg.data.val}")
        self.val_tile, note = validation_tile(cfg.data.crop_size, self.val_index)
        if note:
            self.log(note)
        self.class_names = self.train_index.class_names
        check_val_classes(self.class_names, self.val_index, cfg.data.val)
        self.amp_dtype = resolve_amp_dtype(cfg.amp, self.device)
        resuming = self._resume_from is not None
        model = build_train_model(cfg, self.class_names, self.device, self.dist.enabled, self.amp_dtype, resuming)
        assert model.config is not None  # set by build_model
        self.model_config = model.config
        warning = anchor_warning(cfg, self.train_index, self.model_config) if self.dist.is_main else None
        if warning:  # once, before training; the config is left as the user set it
            self.log(f"warning: {warning}")
        overlap = val_overlap_warning(self.train_index, self.val_index, cfg.data.val)
        if overlap:
            self.log(f"warning: {overlap}")
        if self.train_index.num_objects == 0:  # e.g. every label file empty: hours spent learning nothing
            self.log(f"warning: {cfg.data.train}: no objects in its {len(self.train_index)} training images; nothing to learn")
        self._build_run(model)

        self.bad_batches = 0
        self.bad_in_a_row = 0  # non-finite losses in a row, across epochs (one may be shorter than the limit)
        self.skipped_images = 0  # unreadable images skipped, over this session's epochs
        self.issues_seen: set[str] = set()  # data warnings already shown in this run
        self._clock: tuple[float, float] | None = None  # (wall time, elapsed_s) when fit() began
        self.stops = StopSignals(self.dist, self.device, cfg.time_budget_minutes, self.log)
        self._stop_at_step: int | None = None
        self._epoch_complete = False  # whether train_epoch's stop came with the epoch's last batch
        self._last_save = time.time()
        self._saved_at: tuple[int, int, int] | None = None  # (epoch, batch, step) of last.ckpt
        if self.dist.is_main:
            for stale in remove_stale_temp_files(self.output):
                self.log(f"removed {stale}: a temp file of an interrupted save")
        self._maybe_resume()
        self.metrics = MetricsLogger(self.output, self.dist.is_main, self.step, self.epoch)
        if self.dist.is_main:  # the settings beside the weights (a resumed run writes its own)
            atomic_write(self.output / "config.yaml", cfg.to_yaml())
        if self.metrics.dropped_rows:
            self.log(f"{self.metrics.path}: dropped {self.metrics.dropped_rows} rows logged after the checkpoint")

    def _build_run(self, model: nn.Module) -> None:
        """Loader, state (EMA copied before any wrapper touches ``model``), the DDP / thread
        wrappers and the step of ``model``."""
        cfg, mc = self.cfg, self.model_config
        self.loader, self.seeded, self.sampler = build_train_loader_for(
            cfg, self.train_index, mc, self.dist, self.device
        )
        self.steps_per_epoch, self.total_steps = count_steps(cfg, len(self.loader))
        for unused in unused_settings(cfg, self.steps_per_epoch):
            self.log(f"warning: {unused}")
        steps = (self.steps_per_epoch, self.total_steps)
        self.state: TrainState = build_train_state(cfg, model, steps, self.dist.world_size, self.amp_dtype)
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp: nn.Module = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        else:
            self.ddp = model
        threads = resolve_threads(cfg.data_parallel_threads, self.device, self.dist.enabled, cfg.batch_size)
        # BN of a share of 1 image fails when the top level's map is 1x1 (small image sizes)
        top = min(mc.image_size) // mc.max_stride
        self.threads = ThreadDataParallel(model, threads, min_share=2 if top <= 1 else 1) if threads > 1 else None
        labeler = AnchorLabeler(anchors_for_config(mc.anchors, mc.image_size).to(self.device))
        self.stepper = TrainStep(cfg, self.state, self.ddp, labeler, self.dist, self.device, self.amp_dtype, self.threads)

    def _maybe_resume(self) -> None:
        path = self._resume_from
        if path is None:
            return
        mc = self.model_config
        changes = self.state.restore(path, mc.name, mc.image_size, self.class_names, self.cfg.to_dict())
        self._saved_at = self.state.position
        self.log(f"resumed from {path}: epoch {self.epoch}, step {self.step}")
        if changes:
            self.log(f"warning: settings changed since the checkpoint: {'; '.join(changes)}")

    # -- checkpoints ----------------------------------------------------------------------
    def save(self, name: str = "last") -> Path | None:
        """Write ``{name}.ckpt`` (full training state) and ``{name}.safetensors`` (EMA weights)."""
        if not self.dist.is_main:
            return None
        path = self.output / f"{name}.ckpt"
        self.state.elapsed_s = self._elapsed()
        self.state.save(path, self.cfg.to_dict(), self.class_names)  # first: the resume point matters most
        self._last_save = time.time()
        if name == "last":
            self._saved_at = self.state.position
        self._write_ema(self.output / f"{name}.safetensors")
        return path

    def _write_ema(self, path: Path) -> None:
        """The EMA weights as ``.safetensors`` (atomic too: on errors the previous file stays)."""
        try:
            save_model(self.ema.module, path)
        except WeightsError as err:
            raise CheckpointError(describe_write_error(path, err.__cause__ or err, "the EMA weights")) from err

    # -- time ------------------------------------------------------------------------------
    def _elapsed(self) -> float:
        """Seconds of training so far in this run, earlier (resumed-from) sessions included."""
        if self._clock is None:
            return self.elapsed_s
        start, base = self._clock
        return base + time.time() - start

    # -- one epoch ------------------------------------------------------------------------
    def _progress_bar(self) -> Any:
        """This epoch's tqdm bar (:func:`~.progress.epoch_bar`); None without progress output."""
        if not self.progress:
            return None
        budget = self.cfg.time_budget_minutes
        return epoch_bar(self.epoch, self.cfg.epochs, len(self.loader), budget, self._elapsed() / 60)

    def _note_issues(self, batch: dict[str, Any]) -> None:
        """Warn each data issue of ``batch`` once per run; count the skipped images. Every
        rank warns about its own samples (the other ranks never see them)."""
        self.skipped_images += int(batch.get("skipped", 0))
        for issue in batch.get("issues", ()):
            if issue not in self.issues_seen:
                self.issues_seen.add(issue)
                warn_issue(issue)

    def train_epoch(self) -> str | None:
        """Train until the epoch ends (None) or a stop reason ("max_steps", "time", "signal")."""
        cfg = self.cfg
        self.ddp.train()
        if cfg.freeze_backbone:
            self.model.backbone.eval()  # frozen BN statistics too
        self.seeded.set_epoch(self.epoch)
        self.sampler.set_epoch(self.epoch)
        self.sampler.skip(self.batch_in_epoch * cfg.batch_size)
        bar = self._progress_bar()
        accum, t0, seen = 0, time.perf_counter(), 0
        try:
            batches = len(self.loader)  # this pass's (a resumed epoch skips those done)
            for i, batch in enumerate(self.loader):
                self.batch_in_epoch += 1
                # the epoch's last micro-batches step too, though fewer than grad_accum: the
                # schedule counts ceil(batches / grad_accum) steps an epoch, and gradients must
                # not leak into the next epoch (nor be lost in a checkpoint at its end)
                due = accum + 1 == cfg.grad_accum or i + 1 == batches
                self._note_issues(batch)
                if bar is not None and not cfg.time_budget_minutes:
                    bar.update(1)
                if batch["images"].shape[0] == 0:
                    self.bad_batches += 1  # every image of the batch was unreadable (warned)
                    continue
                losses = self.stepper.backward(batch, sync=due)
                if losses is None:
                    accum, self.bad_in_a_row = 0, self.bad_in_a_row + 1
                    self._skipped_step(self.bad_in_a_row)
                    continue
                accum += 1
                seen += batch["images"].shape[0]
                if not due:
                    continue
                accum, self.bad_in_a_row = 0, 0
                # the budget share agreed after the previous step: one all-reduce a step, not two
                self.stepper.optimizer_step(self.stops.budget_used if cfg.time_budget_minutes else None)
                self._after_update(losses, seen / max(time.perf_counter() - t0, 1e-9), bar)
                self.stops.agree(self._elapsed())
                stop = self._stop_reason()
                if stop is not None:
                    self._epoch_complete = i + 1 == batches
                    return stop
        finally:
            if bar is not None:
                bar.close()
        if accum:  # the epoch ended in unreadable batches: drop what they left unapplied
            self.optimizer.zero_grad(set_to_none=True)
        return None

    def _skipped_step(self, consecutive: int) -> None:
        """Report a skipped step; after ``max_consecutive_nonfinite`` in a row, save and stop."""
        self.log(f"warning: non-finite loss at step {self.step}, skipped ({self.nonfinite_steps} so far)")
        if consecutive >= self.cfg.max_consecutive_nonfinite:
            path = self.save("last")
            raise TrainingDiverged(
                f"{consecutive} non-finite losses in a row at step {self.step}: training "
                f"diverged. Checkpoint saved to {path}. Lower optim.lr or check the data."
            )

    def _after_update(self, losses: dict[str, torch.Tensor], images_per_s: float, bar: Any) -> None:
        """Record the step's loss, log metrics every ``log_every`` steps, checkpoint when due."""
        cfg = self.cfg
        loss = float(losses["loss"].detach())
        self.history.append(loss)
        if self.step % cfg.log_every == 0 or self.step == 1:
            ips = images_per_s * self.dist.world_size
            lr = self.optimizer.param_groups[0]["lr"]
            values = {k: float(v.detach()) for k, v in losses.items()}
            self.metrics.log("train", self.epoch, self.step, {**values, "lr": lr, "images_per_s": ips})
            if bar is not None:
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{ips:.1f}")
        if bar is not None and cfg.time_budget_minutes:
            show_minutes(bar, self._elapsed() / 60, cfg.time_budget_minutes)
        if cfg.checkpoint_every_steps and self.step % cfg.checkpoint_every_steps == 0:
            self.save("last")

    def _stop_reason(self) -> str | None:
        """Why training stops after this step ("max_steps", "time", "signal", "stopped"), or None."""
        cfg = self.cfg
        if cfg.max_steps and self.step >= cfg.max_steps:
            return "max_steps"
        if self.stops.out_of_time:
            return "time"
        if self.stops.signalled:
            return "signal"
        if self._stop_at_step is not None and self.step >= self._stop_at_step:
            return "stopped"
        return None

    # -- validation -----------------------------------------------------------------------
    def validate(self) -> dict[str, float] | None:
        """COCO AP of the EMA weights on the validation set, sharded over the DDP ranks (each
        scores its share; every rank gets the same numbers, so all agree on ``best``)."""
        if self.val_index is None:
            return None
        from ..evaluation.run import evaluate

        broadcast_module(self.ema.module, self.dist)  # one model: BN statistics are per rank
        scored: Any = self.ema.module
        if self.val_tile is not None:
            from ..inference.detector import Detector
            from ..inference.sliced import SlicedDetector

            scored = SlicedDetector(Detector(self.ema.module), self.val_tile)
        result = evaluate(scored, self.val_index, batch_size=self.cfg.batch_size, progress=False, dist=self.dist)
        return {k: result.stats[k] for k in ("AP", "AP50", "AP75")}

    # -- the whole run --------------------------------------------------------------------
    def _end_epoch(self, skipped_before: int) -> None:
        """After a complete epoch: summary, validation (and ``best``) when due, ``last`` when due."""
        cfg = self.cfg
        self.epoch += 1
        self.batch_in_epoch = 0
        due = cfg.eval_every and (self.epoch % cfg.eval_every == 0 or self.epoch == cfg.epochs)
        metrics = self.validate() if due else None
        summary = []
        if metrics is not None:
            summary.append(self._record_validation(metrics))
        skipped = self.skipped_images - skipped_before
        if skipped:
            summary.append(f"{skipped} unreadable images skipped")
        if summary:
            self.log(f"epoch {self.epoch}: " + "  ".join(summary))
        if self.epoch == cfg.epochs or time.time() - self._last_save >= cfg.checkpoint_min_interval_s:
            self.save("last")
        barrier(self.dist)

    def _record_validation(self, metrics: dict[str, float]) -> str:
        """Log a validation (after ``self.epoch`` complete epochs), save ``best`` when it is
        the best so far; the summary text."""
        self.metrics.log("val", self.epoch, self.step, metrics)
        # a run resumed from another folder's checkpoint brings that folder's best AP: this
        # folder's first validation still writes its best.*
        if metrics["AP"] > self.best_metric or not (self.output / "best.safetensors").is_file():
            self.best_metric = metrics["AP"]
            self.save("best")
        return f"AP {metrics['AP']:.4f}  AP50 {metrics['AP50']:.4f}"

    def _validate_run_end(self) -> None:
        """The run reached its planned end (``max_steps``, the time budget) inside an epoch:
        validate the final weights too. The schedule has annealed them, and without this
        ``best`` could only be an earlier epoch's (or, in a run shorter than an epoch, absent)."""
        if not self.cfg.eval_every:
            return
        metrics = self.validate()
        if metrics is not None:
            self.log(f"step {self.step} (end of run): " + self._record_validation(metrics))
        barrier(self.dist)

    def fit(self, stop_at_step: int | None = None) -> str:
        """Train to the end (or a stop); returns why it stopped: "done", "max_steps", "time",
        "signal", "stopped". ``stop_at_step`` interrupts like a signal at that optimiser step
        (the schedule still assumes the full run), for tests and notebooks."""
        self._stop_at_step = stop_at_step
        # the time budget covers the whole run: a resumed run gets what its earlier sessions left
        self._clock = (time.time(), self.elapsed_s)
        try:
            with self.stops.handled():
                reason = self._train_until_stop()
        finally:
            self.elapsed_s, self._clock = self._elapsed(), None
            self.metrics.close()
        if self.dist.is_main and self.metrics.path.exists():
            plot_curves(self.metrics.path, self.output / "training_curves.png")
        return reason

    def _train_until_stop(self) -> str:
        """The epochs of :meth:`fit`, then the last saves; why it stopped."""
        # a run resumed from a checkpoint that already reached max_steps or its time budget
        # (killed after its last save) trains no further step
        self.stops.agree(self._elapsed())
        reason = self._stop_reason() or "done"
        while reason == "done" and self.epoch < self.cfg.epochs:
            skipped_before = self.skipped_images
            stop = self.train_epoch()
            if stop is not None:
                reason = stop
                if self._epoch_complete and stop in ("max_steps", "time"):
                    self._end_epoch(skipped_before)  # the run's last step ended an epoch: count, validate it
                elif stop in ("max_steps", "time"):
                    self._validate_run_end()
                break
            self._end_epoch(skipped_before)
        if reason != "done" and self._saved_at != self.state.position:
            self.save("last")  # unless this very state was just saved
        if self.dist.is_main and self.val_index is None:
            self._write_ema(self.output / "best.safetensors")  # no validation: best = last
        return reason
