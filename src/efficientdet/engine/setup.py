"""What a training run is built from: its device, mixed precision and the model as trained."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..factory import create_model
from ..models.efficientdet import EfficientDet
from ..models.layers import make_pointwise_convs_matmul
from ..models.lean_bn import make_batchnorm_silu_lean
from .config import TrainConfig

__all__ = ["resolve_device", "resolve_amp_dtype", "prepare_for_training", "build_train_model"]


def resolve_device(name: str, local_rank: int) -> torch.device:
    """``auto`` -> this rank's GPU when there is one, else the CPU; anything else as given."""
    if name == "auto":
        name = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


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
) -> EfficientDet:
    """The model as ``cfg`` trains it, on ``device``: weights, frozen backbone, BN momentum,
    :func:`prepare_for_training` and, for multi-GPU runs, SyncBatchNorm. ``amp_dtype``: from
    :func:`resolve_amp_dtype`."""
    overrides = {"image_size": cfg.image_size} if cfg.image_size else {}
    model = create_model(
        cfg.model,
        num_classes=len(class_names),
        weights=cfg.weights,
        pretrained_backbone=cfg.pretrained_backbone and cfg.weights is None,
        class_names=list(class_names),
        **overrides,
    )
    if cfg.freeze_backbone:
        for p in model.backbone.parameters():
            p.requires_grad_(False)
    if cfg.bn_momentum is not None:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = cfg.bn_momentum
    prepare_for_training(model, device, cfg.channels_last, amp_dtype)
    if distributed and cfg.sync_bn and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model
