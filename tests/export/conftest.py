"""Shared fixtures for the export tests: non-trivial models and a detection matcher."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from efficientdet import EfficientDet, create_model
from efficientdet.benchmark.models import calibrate_batchnorm_
from efficientdet.ops.boxes import box_iou

Detections = dict[str, torch.Tensor]


def _randomise_(model: nn.Module, seed: int) -> None:
    """Unit-scale random weights, so a wrong op changes outputs visibly (the default init
    makes the heads' outputs nearly constant). As tests/models/conftest.py, for our names."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:  # conv kernels: unit-variance outputs
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            else:  # BN scales and fusion weights: positive, around 1
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            if name.startswith("class_head.predict."):
                p.mul_(0.25)  # O(1) logits: saturated sigmoids would tie at 1.0


def _calibrate_bn_(model: nn.Module, image_size: tuple[int, int], seed: int, var_floor: float = 0.5) -> None:
    """BN running stats = the randomised network's true statistics on noise, variances floored
    at ``var_floor`` (see ``calibrate_batchnorm_``): unfloored, two float32 evaluations of the
    same network (torch vs ONNX Runtime kernels, folded vs unfolded BN) already differ by ~5e-4."""
    noise = torch.randn(2, 3, *image_size, generator=torch.Generator().manual_seed(seed + 1))
    calibrate_batchnorm_(model, noise, var_floor=var_floor)


_MODELS: dict[tuple[str, tuple[int, int]], EfficientDet] = {}


@pytest.fixture(scope="session")
def make_model() -> Callable[[str, tuple[int, int]], EfficientDet]:
    """``make(name, image_size)`` -> a randomised, BN-calibrated eval model with class names
    (cached: tests must not modify it)."""

    def make(name: str, image_size: tuple[int, int]) -> EfficientDet:
        key = (name, tuple(image_size))
        if key not in _MODELS:
            torch.manual_seed(0)
            model = create_model(name, image_size=image_size, **{"backbone.drop_path_rate": 0.0})
            _randomise_(model, 0)
            _calibrate_bn_(model, image_size, 0)
            model.class_names = [f"class{i}" for i in range(model.config.num_classes)]
            _MODELS[key] = model
        return _MODELS[key]

    return make


def match_detections(
    got: Detections, want: Detections, max_detections: int | None = None, iou: float = 0.99, score_tol: float = 1e-4
) -> None:
    """Assert ``got`` and ``want`` hold the same detections: each matched one to one by the same
    label, IoU > ``iou`` (or corners within 0.01 px) and scores within ``score_tol``; order is free.

    Scores that differ by float noise (~1e-6) may swap near-ties, so when a set was cut at
    ``max_detections``, detections within ``score_tol`` of its lowest score may be unmatched.
    """
    gb, gs, gl = got["boxes"].float(), got["scores"].float(), got["labels"]
    wb, ws, wl = want["boxes"].float(), want["scores"].float(), want["labels"]
    used = torch.zeros(len(wb), dtype=torch.bool)
    unmatched = []
    ious = box_iou(gb, wb) if len(gb) and len(wb) else torch.zeros(len(gb), len(wb))
    # Boxes clipped to an image edge can have zero area (IoU undefined, reported as 0): those
    # match when their corners agree to 0.01 px.
    close = (gb[:, None, :] - wb[None, :, :]).abs().amax(-1) < 1e-2
    ious = torch.where(close, torch.ones_like(ious), ious)
    for i in range(len(gb)):
        ok = (~used) & (wl == gl[i]) & ((ws - gs[i]).abs() < score_tol) & (ious[i] > iou)
        if ok.any():
            j = int(torch.where(ok, ious[i], -1.0).argmax())
            used[j] = True
        else:
            unmatched.append(float(gs[i]))
    unmatched += ws[~used].tolist()

    def at_cut(scores: torch.Tensor) -> float:
        cut = max_detections is not None and len(scores) >= max_detections
        return float(scores.min()) + score_tol if cut and len(scores) else float("-inf")

    boundary = max(at_cut(gs), at_cut(ws))
    bad = [s for s in unmatched if s > boundary]
    assert not bad, f"{len(bad)} unmatched detections (scores {bad[:5]}); got {len(gb)}, want {len(wb)}"
    assert abs(len(gb) - len(wb)) <= len(unmatched)
    assert len(unmatched) <= max(2, len(wb) // 20), f"too many boundary swaps: {len(unmatched)}"


@pytest.fixture(scope="session")
def assert_same_detections() -> Callable[..., None]:
    return match_detections
