"""Fit anchor shapes to a dataset's boxes: k-means on log aspect ratios, then a grid search.

Method (deterministic, no randomness): the aspect ratios are 1-D k-means centres of the boxes'
``log(w / h)`` (as many as the current config has, so the head keeps its size; each ratio
``a`` becomes the pair ``(sqrt(a), 1 / sqrt(a))``), tried next to the current ratios; for each
ratio set, every ``anchor_scale`` on a grid and ``num_scales`` in 2..4 is scored by anchor
recall (:func:`~efficientdet.ops.anchor_stats.best_anchor_iou`, exact and cheap). The best
recall wins; ties go to fewer anchors per location, then to the scale nearest the current one.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from efficientdet.config import AnchorConfig
from efficientdet.ops.anchor_stats import best_anchor_iou

__all__ = ["AnchorFit", "fit_anchors", "kmeans_aspect_ratios", "overrides_for"]

SCALE_GRID = tuple(x / 4 for x in range(2, 33))  # anchor_scale 0.5 .. 8.0 in steps of 0.25
NUM_SCALES = (2, 3, 4)


@dataclass
class AnchorFit:
    """The fitted config and the recall of the boxes before and after."""

    config: AnchorConfig
    recall_before: float
    recall_after: float

    @property
    def overrides(self) -> list[str]:
        return overrides_for(self.config)


def overrides_for(cfg: AnchorConfig, prefix: str = "anchors.") -> list[str]:
    """``key=value`` training overrides that select exactly ``cfg``'s anchor shapes."""
    # ``:g`` keeps the fitted ratios' 3 decimals (``.3g`` printed 1.711 as 1.71: the anchors
    # trained on were not the ones whose recall was reported)
    ratios = ",".join(f"[{ax:g},{ay:g}]" for ax, ay in cfg.aspect_ratios)
    return [
        f"{prefix}anchor_scale={cfg.anchor_scale:g}",
        f"{prefix}num_scales={cfg.num_scales}",
        f"{prefix}aspect_ratios=[{ratios}]",
    ]


def kmeans_aspect_ratios(boxes: Tensor, k: int, iterations: int = 50) -> tuple[tuple[float, float], ...]:
    """``k`` anchor aspect pairs ``(sqrt(a), 1/sqrt(a))`` from 1-D k-means on log(w/h) of boxes [M, 4].

    Initialised at quantiles (deterministic); fewer distinct values than ``k`` give fewer pairs.
    """
    w = (boxes[:, 2] - boxes[:, 0]).double().clamp(min=1e-6)
    h = (boxes[:, 3] - boxes[:, 1]).double().clamp(min=1e-6)
    x = torch.log(w / h)
    k = max(1, min(k, int(torch.unique(x.round(decimals=3)).numel())))
    centres = torch.quantile(x, (torch.arange(k, dtype=torch.float64) + 0.5) / k)
    for _ in range(iterations):
        assign = (x[:, None] - centres[None, :]).abs().argmin(dim=1)
        new = torch.stack([x[assign == j].mean() if (assign == j).any() else centres[j] for j in range(k)])
        if torch.allclose(new, centres):
            break
        centres = new
    ratios = sorted(math.exp(float(c)) for c in centres)
    return tuple((round(math.sqrt(a), 3), round(1 / math.sqrt(a), 3)) for a in ratios)


def fit_anchors(
    boxes: Tensor, cfg: AnchorConfig, image_size: tuple[int, int], match_threshold: float = 0.5
) -> AnchorFit:
    """Search anchor scale, number of scales and aspect ratios that maximise the recall of
    boxes [M, 4] (xyxy model-input pixels); levels stay as in ``cfg``. ValueError for M = 0."""
    boxes = boxes.reshape(-1, 4)
    if boxes.shape[0] == 0:
        raise ValueError("the dataset has no boxes to fit anchors to")

    def matched(c: AnchorConfig) -> int:
        # a count, not a rounded share: the current config refitted must compare equal to itself
        return int((best_anchor_iou(boxes, c, image_size) >= match_threshold).sum())

    total = boxes.shape[0]
    ratio_sets = {tuple(cfg.aspect_ratios), kmeans_aspect_ratios(boxes, len(cfg.aspect_ratios))}
    best_key, best_cfg = (matched(cfg), -cfg.num_anchors, 0.0), cfg
    before = best_key[0]
    for ratios in sorted(ratio_sets):
        for num_scales in NUM_SCALES:
            for scale in SCALE_GRID:
                cand = dataclasses.replace(cfg, anchor_scale=scale, num_scales=num_scales, aspect_ratios=ratios)
                key = (matched(cand), -cand.num_anchors, -abs(scale - cfg.anchor_scale))
                if key > best_key:
                    best_key, best_cfg = key, cand
    return AnchorFit(best_cfg, before / total, best_key[0] / total)
