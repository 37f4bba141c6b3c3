"""What a training run is built from: device, mixed precision, the model as trained, its data
loader, its initial state and the checkpoint it resumes from."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..config import ModelConfig
from ..data.augmented import AugmentedDataset, build_pre_ops
from ..data.crops import CropTransform
from ..data.dataset import DetectionDataset
from ..data.loaders import ResumableSampler, SeededDataset, build_train_loader
from ..data.records import DatasetIndex
from ..data.transforms import TrainTransform
from ..devices import parse_device
from ..factory import create_model
from ..models.checkpointing import set_grad_checkpointing
from ..models.efficientdet import EfficientDet
from ..models.layers import make_pointwise_convs_matmul
from ..models.lean_bn import make_batchnorm_silu_lean
from .anchor_check import anchor_model_overrides
from .config import DataConfig, TrainConfig
from .distributed import DistInfo
from .ema import ModelEMA
from .optim import build_optimizer, build_scheduler, default_lr
from .state import TrainState

__all__ = [
    "build_train_loader_for",
    "build_train_model",
    "build_train_state",
    "build_train_transform",
    "check_no_run_in",
    "check_val_classes",
    "count_steps",
    "prepare_for_training",
    "resolve_amp_dtype",
    "resolve_device",
    "resume_path",
    "unused_settings",
    "val_overlap_warning",
]


def resolve_device(name: str, local_rank: int) -> torch.device:
    """``auto`` -> this rank's GPU when there is one, else the CPU; ``cuda`` -> this rank's GPU
    (``cuda:N`` as given); anything else as given. ``ValueError`` naming ``device`` otherwise."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = parse_device(name, "device", "auto, cpu, cuda or cuda:N", "device=cpu (or auto)")
    if device.type == "cuda" and device.index is None:  # torch.cuda.set_device and DDP need an index
        device = torch.device("cuda", local_rank)
    return device


def resolve_amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``TrainConfig.amp``: ``auto`` is bf16 on GPUs that have it, else fp16,
    and off on CPUs (CPU autocast is slower than fp32 for these convs)."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "fp16":
        return torch.float16
    if mode == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def prepare_for_training(
    model: nn.Module, device: torch.device, channels_last: bool, amp_dtype: torch.dtype | None
) -> nn.Module:
    """``model`` moved to ``device`` and its memory format, with the CPU-only training rewrites
    (fp32 CPU runs): lean BN + SiLU, and 1x1 convs as GEMMs on channels-last memory. In place;
    returns ``model``. The Trainer and ``benchmarks/train_throughput.py`` share this rule."""
    model.to(device)
    model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if device.type == "cpu" and amp_dtype is None:
        # BN + SiLU keeping one activation less for backward (models/lean_bn.py)
        make_batchnorm_silu_lean(model)
        if channels_last:
            # 1x1 convs as one GEMM on the NHWC memory: PyTorch's own choice of kernel
            # copies layouts (models/layers.PointwiseConv2d)
            make_pointwise_convs_matmul(model)
    return model


def build_train_model(
    cfg: TrainConfig,
    class_names: Sequence[str],
    device: torch.device,
    distributed: bool,
    amp_dtype: torch.dtype | None,
    resuming: bool = False,
) -> EfficientDet:
    """The model as ``cfg`` trains it, on ``device``: weights, frozen backbone, BN momentum,
    :func:`prepare_for_training`, activation checkpointing and, for multi-GPU runs, SyncBatchNorm. ``amp_dtype``: from
    :func:`resolve_amp_dtype`. ``resuming``: the checkpoint replaces every weight, so no
    ImageNet backbone is loaded (offline, a non-lite0 one could not be: the resume failed)."""
    overrides: dict = {"image_size": cfg.image_size} if cfg.image_size else {}
    overrides.update(anchor_model_overrides(cfg))
    model = create_model(
        cfg.model,
        num_classes=len(class_names),
        weights=cfg.weights,
        pretrained_backbone=cfg.pretrained_backbone and cfg.weights is None and not resuming,
        class_names=list(class_names),
        **overrides,
    )
    if cfg.freeze_backbone:
        if not cfg.pretrained_backbone and cfg.weights is None:
            # legal (tests do it), but for a user almost surely a mistake: nothing will train it
            warnings.warn(
                "freeze_backbone=true with a randomly initialised backbone (pretrained_backbone=false "
                "and no weights): the backbone stays random; set freeze_backbone=false to train it",
                stacklevel=2,
            )
        for p in model.backbone.parameters():
            p.requires_grad_(False)
    if cfg.bn_momentum is not None:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = cfg.bn_momentum
    prepare_for_training(model, device, cfg.channels_last, amp_dtype)
    if cfg.grad_checkpointing:
        set_grad_checkpointing(model)
    if distributed and cfg.sync_bn and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def build_train_transform(cfg: TrainConfig, image_size: int | tuple[int, int]) -> TrainTransform | CropTransform:
    """The per-sample training transform: whole-image scale jitter, or ``data.crop_size`` crops."""
    if cfg.data.crop_size:  # sliced training
        return CropTransform(image_size, cfg.data.crop_size, cfg.data.crop_scale_range, cfg.data.hflip, cfg.data.photometric)
    return TrainTransform(image_size, cfg.data.scale_range, cfg.data.hflip, cfg.data.photometric)


def unused_settings(cfg: TrainConfig, steps_per_epoch: int | None = None) -> list[str]:
    """Augmentation settings that do nothing with the rest of ``cfg`` (a key that needs another
    key), one warning each: ``train`` logs them before training (with its ``steps_per_epoch``),
    ``browse --augment`` prints them."""
    found = []
    if cfg.data.crop_size is None and cfg.data.crop_scale_range != DataConfig().crop_scale_range:
        found.append(
            f"data.crop_scale_range={list(cfg.data.crop_scale_range)} does nothing without data.crop_size "
            "(it jitters the side of the sliced-training crops); whole images are jittered by data.scale_range"
        )
    aug = cfg.augment
    if aug.close_mosaic and not (aug.mosaic or aug.mixup):
        found.append(f"augment.close_mosaic={aug.close_mosaic} does nothing: augment.mosaic and augment.mixup are 0")
    elif aug.close_mosaic and steps_per_epoch and cfg.max_steps:  # it counts back from `epochs`
        reached = math.ceil(cfg.max_steps / steps_per_epoch)
        if reached <= cfg.epochs - aug.close_mosaic:
            fix = f"set epochs={reached}" + ("" if aug.close_mosaic < reached else f" and close_mosaic below {reached}")
            found.append(
                f"augment.close_mosaic={aug.close_mosaic} does nothing: it counts back from epochs={cfg.epochs}, "
                f"but max_steps={cfg.max_steps} stops the run after {reached} epochs; {fix}"
            )
    return found


def build_train_dataset(
    cfg: TrainConfig, index: DatasetIndex, transform: Any, max_pixels: int | None
) -> DetectionDataset:
    """The plain dataset, or an :class:`AugmentedDataset` when ``cfg.augment`` asks for more."""
    aug = cfg.augment
    if aug.policy == "none" and not aug.grid_mask and aug.mosaic == 0 and aug.mixup == 0:
        return DetectionDataset(index, transform=transform, max_pixels=max_pixels)
    pre = build_pre_ops(aug.policy, aug.grid_mask)
    return AugmentedDataset(
        index, transform, max_pixels, pre, aug.mosaic, aug.mixup, aug.close_mosaic, cfg.epochs
    )


def build_train_loader_for(
    cfg: TrainConfig, index: DatasetIndex, model_config: ModelConfig, dist: DistInfo, device: torch.device
) -> tuple[DataLoader, SeededDataset, ResumableSampler]:
    """The training loader of ``index`` (augmented, seeded, resumable); refuses one without a
    single usable batch."""
    transform = build_train_transform(cfg, model_config.image_size)
    dataset = build_train_dataset(cfg, index, transform, model_config.preprocess.max_input_pixels)
    loader, seeded, sampler = build_train_loader(
        dataset, cfg.batch_size, cfg.data.workers, cfg.seed, dist.rank, dist.world_size,
        pin_memory=device.type == "cuda",
    )  # fmt: skip
    # up to the top level's stride its feature map is 1x1: batch norm in training needs more
    # than one value per channel, and a step of one image failed with torch's message
    per_step = min(cfg.batch_size, sampler.num_samples)
    if per_step < 2 and min(model_config.image_size) <= model_config.max_stride:
        size = "x".join(map(str, model_config.image_size))
        raise ValueError(
            f"batch_size: a step of {per_step} image (batch_size={cfg.batch_size}, {sampler.num_samples} training "
            f"images per process) at image size {size}: the top pyramid level is 1x1 and batch norm needs more "
            f"than one value per channel; use batch_size >= 2 with at least 2 images, or image_size > {model_config.max_stride}"
        )
    return loader, seeded, sampler


def check_has_images(index: DatasetIndex, source: str) -> None:
    """Refuse training data of which every record was skipped (warned per file), before a
    model is built for its (then empty) class list."""
    if len(index) == 0 and not index.skipped:  # "see the warnings above" when there were none
        raise ValueError(f"{source}: no training images: the dataset lists none")
    if len(index) == 0:
        raise ValueError(
            f"{source}: no usable training images ({len(index.skipped)} records skipped, see the warnings above)"
        )


def check_val_classes(class_names: Sequence[str], val_index: DatasetIndex | None, source: str | None) -> None:
    """Refuse validation data the model of ``class_names`` cannot be scored on (other classes,
    another count), before training: the first validation failed on it after a whole epoch,
    unsaved. The rules are evaluation's (:func:`~efficientdet.evaluation.labels.label_mapping`)."""
    if val_index is None:
        return
    from ..evaluation.labels import label_mapping

    try:
        label_mapping(len(class_names), list(class_names), val_index)
    except ValueError as err:
        raise ValueError(f"{source}: validation data: {err}") from err


def val_overlap_warning(train: DatasetIndex, val: DatasetIndex | None, source: str | None) -> str | None:
    """A warning when validation images are training images too (``data.val`` the training
    data, or a VOC folder with a train list but none for val, whose val split is every XML):
    the AP, and the ``best`` it picks, then measure memorising. None when they are apart."""
    if val is None:
        return None
    seen = {r.image_path.resolve() for r in train.records}
    shared = sum(r.image_path.resolve() in seen for r in val.records)
    if not shared:
        return None
    return (
        f"{source}: {shared} of its {len(val)} validation images are training images too: the AP (and best.*) "
        "measures what was trained on (a VOC folder without a val list reads every XML as its val split)"
    )


def validation_tile(crop_size: int | None, val_index: DatasetIndex | None) -> tuple[int | None, str | None]:
    """The tile validation slices at, and a note for the log: a model trained on crops
    (``data.crop_size``) is scored as it is meant to run, on tiles of that size (sliced
    inference); on whole images it scores near 0 and ``best`` would be noise. None (whole
    images) without crops, or where the tile is no multiple of 32 or some image is smaller."""
    from ..inference.sliced import TILE_MULTIPLE

    if crop_size is None or val_index is None:
        return None, None
    whole = f"validation runs on whole images, not sliced at data.crop_size={crop_size}"
    if crop_size % TILE_MULTIPLE:
        return None, f"{whole}: tiles must be a multiple of {TILE_MULTIPLE}"
    small = next((r for r in val_index.records if r.width is None or r.height is None or min(r.width, r.height) < crop_size), None)
    if small is not None:
        return None, f"{whole}: {small.image_path} is smaller than a tile (or has no size in the annotations)"
    return crop_size, f"validation: sliced inference on {crop_size} x {crop_size} tiles + the whole image (data.crop_size)"


def count_steps(cfg: TrainConfig, batches_per_epoch: int) -> tuple[int, int]:
    """(optimiser steps per epoch, steps of the whole run) for the LR schedule."""
    steps_per_epoch = max(1, math.ceil(batches_per_epoch / cfg.grad_accum))
    total = steps_per_epoch * cfg.epochs
    return steps_per_epoch, min(total, cfg.max_steps) if cfg.max_steps else total


def build_train_state(
    cfg: TrainConfig, model: nn.Module, steps: tuple[int, int], world_size: int, amp_dtype: torch.dtype | None
) -> TrainState:
    """A new run's state: EMA, optimiser (LR scaled to the global batch), schedule over
    ``steps`` (from :func:`count_steps`), and a loss scaler for fp16."""
    ema = ModelEMA(model, cfg.optim.ema_decay, cfg.optim.ema_warmup_steps)
    ema.module.config, ema.module.class_names = model.config, model.class_names
    lr = default_lr(cfg.optim, cfg.batch_size * cfg.grad_accum * world_size)
    optimizer = build_optimizer(model, cfg.optim, lr)
    scheduler = build_scheduler(optimizer, cfg.optim, *steps)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    return TrainState(model, ema, optimizer, scheduler, scaler, world_size=world_size)


RUN_FILES = ("last.ckpt", "best.ckpt", "last.safetensors", "best.safetensors")


def check_no_run_in(output: Path) -> None:
    """Refuse to start a new run in a folder that holds one: its checkpoints would be
    overwritten one by one (``best.*`` only once the new run beats it, so the folder would
    mix the two runs) and its metrics dropped, all without a word."""
    found = [name for name in RUN_FILES if (output / name).exists()]
    if found:
        raise ValueError(
            f"{output} already holds a training run ({', '.join(found)}): pass --resume (resume=true) "
            "to continue it, or choose another --output for a new run (or delete the folder first)"
        )


def resume_path(cfg: TrainConfig, output: Path, log: Callable[[str], None]) -> Path | None:
    """The checkpoint to resume from, or None for a new run.

    ``resume``: False: a new run (refused where ``output`` holds one, :func:`check_no_run_in`);
    True / "auto": ``output/last.ckpt`` when it exists; a path: that file. A
    worker that torchrun restarted (``--max-restarts``, TORCHELASTIC_RESTART_COUNT > 0)
    always resumes from ``output/last.ckpt`` when there is one: starting over would
    overwrite the run's checkpoints with a fresh run.
    """
    resume = cfg.resume
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    if not resume and restarts > 0:
        log(f"torchrun restart {restarts}: resuming automatically")
        resume = "auto"
    if not resume:
        check_no_run_in(output)
        return None
    if resume is True or str(resume).lower() == "auto":
        path = output / "last.ckpt"
        if not path.exists():
            log(f"no checkpoint at {path}: starting a new run")
            return None
        return path
    return Path(str(resume))  # an explicit file must exist: load_checkpoint says if not
