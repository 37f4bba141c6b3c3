"""Anchor recall: which ground-truth boxes some anchor matches at the labeller's IoU threshold.

The best IoU of a box over all anchors is computed without the [M, T] IoU matrix: anchors of
one shape (level, octave, aspect) sit on a regular grid, and the IoU of two boxes of fixed
shapes only falls as their centres move apart along x or along y (intersection is the product
of per-axis overlaps, each falling with the offset; IoU rises with intersection). So for each
anchor shape the best anchor is the one at the grid centre nearest the box's centre, per axis,
and the best IoU over all anchors is the maximum over the A * L shapes of that one IoU. This is
exactly ``batched_anchor_iou(anchors, boxes).max()`` (tested), at O(M * A * L) cost, which is
what makes the fitting search (:mod:`efficientdet.ops.anchor_fit`) cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from efficientdet.config import AnchorConfig
from efficientdet.ops.anchors import feature_size

__all__ = [
    "ASPECT_BUCKETS",
    "SIZE_BUCKETS",
    "AnchorRecall",
    "anchor_recall",
    "best_anchor_iou",
]

# COCO's area ranges, in model-input pixels: small < 32^2 <= medium < 96^2 <= large.
SIZE_BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("small", 0.0, 32.0**2),
    ("medium", 32.0**2, 96.0**2),
    ("large", 96.0**2, float("inf")),
)
# Width / height.
ASPECT_BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("tall <1:3", 0.0, 1 / 3),
    ("1:3-1:1.5", 1 / 3, 1 / 1.5),
    ("~1:1", 1 / 1.5, 1.5),
    ("1.5:1-3:1", 1.5, 3.0),
    ("wide >3:1", 3.0, float("inf")),
)


def _shapes(cfg: AnchorConfig, image_size: tuple[int, int]) -> list[tuple[float, float, int, int, Tensor, Tensor]]:
    """Per level: (stride_y, stride_x, feat_h, feat_w, widths [A], heights [A]) as ``generate_anchors``."""
    height, width = int(image_size[0]), int(image_size[1])
    octaves = torch.arange(cfg.num_scales, dtype=torch.float64) / cfg.num_scales
    ratios = torch.tensor([tuple(r) for r in cfg.aspect_ratios], dtype=torch.float64)
    out = []
    for level in range(cfg.min_level, cfg.max_level + 1):
        feat_h, feat_w = feature_size(height, level), feature_size(width, level)
        stride_y, stride_x = height / feat_h, width / feat_w
        base_x = cfg.anchor_scale * stride_x * 2.0**octaves
        base_y = cfg.anchor_scale * stride_y * 2.0**octaves
        widths = (base_x[:, None] * ratios[None, :, 0]).reshape(-1)
        heights = (base_y[:, None] * ratios[None, :, 1]).reshape(-1)
        out.append((stride_y, stride_x, feat_h, feat_w, widths, heights))
    return out


def _nearest_centre(centre: Tensor, stride: float, count: int) -> Tensor:
    """The anchor-grid centre (stride / 2 + k * stride, k in [0, count)) nearest ``centre``."""
    k = torch.round((centre - stride / 2.0) / stride).clamp_(0, count - 1)
    return stride / 2.0 + k * stride


def best_anchor_iou(boxes: Tensor, cfg: AnchorConfig, image_size: tuple[int, int]) -> Tensor:
    """Highest IoU of each box with any anchor of ``cfg`` at ``image_size`` (h, w).

    boxes [M, 4] xyxy model-input pixels -> [M] float64 (0 for empty boxes).
    """
    boxes = boxes.to(torch.float64).reshape(-1, 4)
    x0, y0, x1, y1 = boxes.unbind(-1)
    bw, bh = (x1 - x0).clamp(min=0), (y1 - y0).clamp(min=0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    area = (bw * bh)[:, None]  # [M, 1]
    best = torch.zeros(boxes.shape[0], dtype=torch.float64)
    for stride_y, stride_x, feat_h, feat_w, widths, heights in _shapes(cfg, image_size):
        ax = _nearest_centre(cx, stride_x, feat_w)[:, None]  # [M, 1]
        ay = _nearest_centre(cy, stride_y, feat_h)[:, None]
        # Per-axis overlap of the box with the anchor of each shape at (ax, ay): [M, A].
        ox = (torch.minimum(x1[:, None], ax + widths / 2) - torch.maximum(x0[:, None], ax - widths / 2)).clamp(min=0)
        oy = (torch.minimum(y1[:, None], ay + heights / 2) - torch.maximum(y0[:, None], ay - heights / 2)).clamp(min=0)
        inter = ox * oy
        iou = inter / (area + widths * heights - inter)
        best = torch.maximum(best, iou.amax(dim=1))
    return best


@dataclass
class AnchorRecall:
    """Matched share of boxes overall and per bucket; ``unmatched`` indices into the boxes."""

    threshold: float
    num_boxes: int
    recall: float
    by_size: dict[str, tuple[float, int]] = field(default_factory=dict)  # name -> (recall, count)
    by_aspect: dict[str, tuple[float, int]] = field(default_factory=dict)
    unmatched: list[int] = field(default_factory=list)
    best_iou: Tensor | None = None

    def table(self) -> str:
        """The report as aligned text lines (buckets without boxes are left out)."""
        lines = [f"anchor recall @ IoU {self.threshold:g}: {self.recall:.3f} of {self.num_boxes} boxes"]
        for title, buckets in (("size (model-input px)", self.by_size), ("aspect (w:h)", self.by_aspect)):
            lines.append(f"  by {title}:")
            for name, (value, count) in buckets.items():
                if count:
                    lines.append(f"    {name:<12} {value:6.3f}  ({count} boxes)")
        return "\n".join(lines)


def _bucket(values: Tensor, matched: Tensor, buckets: Sequence[tuple[str, float, float]]) -> dict[str, tuple[float, int]]:
    out = {}
    for name, lo, hi in buckets:
        inside = (values >= lo) & (values < hi)
        count = int(inside.sum())
        out[name] = (float(matched[inside].double().mean()) if count else float("nan"), count)
    return out


def anchor_recall(
    boxes: Tensor, cfg: AnchorConfig, image_size: tuple[int, int], match_threshold: float = 0.5
) -> AnchorRecall:
    """The share of boxes [M, 4] (xyxy model-input pixels) whose best anchor IoU reaches
    ``match_threshold`` (the labeller's positive threshold), overall, by COCO size bucket and
    by aspect ratio. Raises ValueError for M = 0."""
    boxes = boxes.reshape(-1, 4)
    if boxes.shape[0] == 0:
        raise ValueError("no ground-truth boxes to measure anchor recall on")
    best = best_anchor_iou(boxes, cfg, image_size)
    matched = best >= match_threshold
    w = (boxes[:, 2] - boxes[:, 0]).double().clamp(min=0)
    h = (boxes[:, 3] - boxes[:, 1]).double().clamp(min=0)
    aspect = w / h.clamp(min=1e-9)
    return AnchorRecall(
        threshold=match_threshold,
        num_boxes=int(boxes.shape[0]),
        recall=float(matched.double().mean()),
        by_size=_bucket(w * h, matched, SIZE_BUCKETS),
        by_aspect=_bucket(aspect, matched, ASPECT_BUCKETS),
        unmatched=(~matched).nonzero().flatten().tolist(),
        best_iou=best,
    )
