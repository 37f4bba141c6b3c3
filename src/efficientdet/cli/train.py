"""``efficientdet train``: train or fine-tune on COCO / VOC / YOLO data (torchrun for DDP)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..engine.config import PRESETS, TrainConfig, load_train_config, parse_override


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train or fine-tune a model",
        description=(
            "Train on a dataset in COCO JSON, Pascal VOC or YOLO format. Settings come from the "
            "defaults, then --preset, then --config FILE (YAML), then KEY=VALUE overrides "
            "(e.g. optim.lr=0.01 data.val=val.json). Multi-GPU / multi-node: "
            "torchrun --nproc_per_node N -m efficientdet train ..."
        ),
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides (dotted keys)")
    p.add_argument("--config", help="YAML training config")
    p.add_argument("--preset", choices=sorted(PRESETS), help="finetune: AdamW recipe for small datasets")
    p.add_argument("--data", help="training data (same as data.train=...)")
    p.add_argument("--val", help="validation data (same as data.val=...)")
    p.add_argument("--model", help="model name (same as model=...)")
    p.add_argument("--output", help="output folder (same as output=...)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUTPUT/last.ckpt if it exists, else start anew (same as resume=auto); "
        "under torchrun --max-restarts, restarted workers resume by themselves",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def _resumed_settings(cfg: TrainConfig) -> TrainConfig | None:
    """The settings saved in the checkpoint ``cfg`` resumes from (``output/last.ckpt`` or the
    ``resume`` file), or None when there is none (a new run)."""
    from ..engine.checkpoint import load_checkpoint

    auto = cfg.resume is True or str(cfg.resume).lower() == "auto"
    path = Path(cfg.output) / "last.ckpt" if auto else Path(str(cfg.resume))
    if not path.is_file():
        return None
    saved = load_checkpoint(path).get("config")
    if not isinstance(saved, dict):
        return None
    try:
        return load_train_config(None, saved)
    except ValueError as err:
        raise ValueError(f"{path}: the run's saved settings: {err}") from err


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    given = dict(parse_override(o) for o in overrides)
    for flag, key in (("data", "data.train"), ("val", "data.val"), ("model", "model"), ("output", "output")):
        value = getattr(args, flag)
        if value is not None:
            # both on the line: the flag used to win without a word
            if key in given and given[key] != parse_override(f"{key}={value}")[1]:
                raise ValueError(f"--{flag} {value} and {key}={given[key]} disagree; give one of them")
            overrides.append(f"{key}={value}")
    if args.resume:
        overrides.append("resume=true")
    cfg = load_train_config(args.config, overrides, args.preset)
    if cfg.resume and args.config is None:
        # `train --output runs/x --resume`: what the line does not set is the run's own setting
        saved = _resumed_settings(cfg)
        if saved is not None:
            cfg = load_train_config(None, overrides, args.preset, base=saved)
    if not cfg.data.train:
        raise ValueError("no training data: pass --data PATH or data.train=PATH")

    from ..engine.trainer import Trainer, TrainingDiverged
    from .notices import print_data_warnings

    with print_data_warnings("train"):
        trainer = Trainer(cfg, progress=not args.no_progress)
        try:
            reason = trainer.fit()
        except TrainingDiverged as err:
            print(f"efficientdet train: {err}", file=sys.stderr)
            return 3
    if trainer.dist.is_main:
        out = trainer.output
        print(f"stopped: {reason} after {trainer.step} steps ({trainer.epoch} epochs)")
        weights, note = out / "best.safetensors", ""
        if not weights.exists():  # stopped before the first validation (or eval_every=0): no best
            weights, note = out / "last.safetensors", "; no best.safetensors: no validation has run"
        print(f"weights: {weights} (EMA{note}), checkpoint: {out / 'last.ckpt'}")
        if trainer.nonfinite_steps or trainer.bad_batches or trainer.skipped_images:
            print(
                f"skipped: {trainer.skipped_images} unreadable images, {trainer.nonfinite_steps} "
                f"non-finite steps, {trainer.bad_batches} empty batches"
            )
    from ..engine.distributed import cleanup

    cleanup(trainer.dist)
    return 130 if reason == "signal" else 0
