"""Helpers for parity tests against the reference implementation (effdet, a dev extra)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _randomise_(model: nn.Module, seed: int) -> None:
    """Unit-scale random values for every weight, so a wrong op changes outputs visibly.

    With the default init the heads' outputs are nearly constant (tiny weights, prior bias),
    and a parity test would pass for almost any network. Conv weights get std 1/sqrt(fan_in)
    (unit-variance outputs), BN affine and fusion weights O(1) values.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:  # conv kernels
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            else:  # BN scales and fusion weights: positive, around 1
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            if name.startswith("class_net.predict."):
                # keep logits O(1): saturated sigmoids tie at 1.0 and make detection order arbitrary
                p.mul_(0.25)


def _calibrate_bn_(model: nn.Module, image_size: tuple[int, int], seed: int, steps: int = 1, batch: int = 2) -> None:
    """Set BN running statistics to the true statistics of the randomised network.

    A train-mode forward with ``momentum=None`` gives the cumulative average of the batch
    statistics: every BN then normalises its input, activations stay O(1) through the whole
    network, and eval-mode outputs depend on every layer.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    g = torch.Generator().manual_seed(seed + 1)
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.randn(batch, 3, *image_size, generator=g))
    for m, momentum in zip(bns, saved):
        m.momentum = momentum
    model.eval()


@pytest.fixture
def reference_checkpoint(tmp_path: Path) -> Callable[..., tuple[nn.Module, Path]]:
    """``make(name, image_size)`` -> (effdet model in eval mode, path of its saved state dict)."""
    pytest.importorskip("effdet")
    from effdet.config import get_efficientdet_config
    from effdet.efficientdet import EfficientDet as RefEfficientDet

    def make(
        name: str, image_size: tuple[int, int], calib_size: tuple[int, int] | None = None, seed: int = 0
    ) -> tuple[nn.Module, Path]:
        def build(size: tuple[int, int]) -> nn.Module:
            cfg = get_efficientdet_config("tf_" + name)
            # effdet fixes its upsampling sizes at build time: build it for the input size.
            cfg.image_size = size
            cfg.backbone_args = dict(drop_path_rate=0.0)  # deterministic train-mode calibration
            return RefEfficientDet(cfg, pretrained_backbone=False)

        torch.manual_seed(seed)
        ref = build(image_size)
        _randomise_(ref, seed)
        if calib_size is not None and calib_size != image_size:
            # BN statistics do not depend on the input size: calibrate a cheap small copy.
            small = build(calib_size)
            small.load_state_dict(ref.state_dict())
            _calibrate_bn_(small, calib_size, seed)
            ref.load_state_dict(small.state_dict())
            ref.eval()
        else:
            _calibrate_bn_(ref, image_size, seed, batch=1 if image_size[0] * image_size[1] > 1024 * 1024 else 2)
        path = tmp_path / f"{name}.pth"
        torch.save(ref.state_dict(), path)
        return ref, path

    return make
