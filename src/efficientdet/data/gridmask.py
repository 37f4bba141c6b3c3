"""GridMask (google/automl ``aug/gridmask.py``): zero a rotated grid of squares; boxes unchanged."""

from __future__ import annotations

import math

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor

__all__ = ["GridMask"]


class GridMask:
    """``GridMask()(image uint8 [3, H, W], boxes, labels) -> (image, boxes, labels)``.

    Official defaults: applied with probability ``prob`` 0.5 (the official code tests an N(0, 1)
    sample against it, i.e. ~69% of images; we use a plain uniform draw), stripe ratio 0.6,
    rotation ``rotate`` * N(-1, 1) degrees. The grid period d ~ U[min(0.5h, 0.3w), max(0.5h, 0.3w)];
    the (d - l)^2 squares between stripes of width l = d * ratio are set to 0.
    """

    def __init__(self, prob: float = 0.5, ratio: float = 0.6, rotate: float = 10.0) -> None:
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"GridMask prob {prob} is not in [0, 1]")
        self.prob, self.ratio, self.rotate = float(prob), float(ratio), float(rotate)

    def mask(self, h: int, w: int) -> Tensor:
        """A float32 [h, w] mask: 1 where the image is kept."""
        side = math.ceil(1.5 * max(h, w))
        lo, hi = int(min(0.5 * h, 0.3 * w)), int(max(0.5 * h, 0.3 * w))
        d = max(2, int(torch.randint(max(lo, 2), max(hi, 2) + 1, ())))
        length = min(max(int(d * self.ratio + 0.5), 1), d - 1)
        grid = torch.arange(side)
        keep_rows = ((grid - int(torch.randint(0, d + 1, ()))) % d) < length  # stripes kept
        keep_cols = ((grid - int(torch.randint(0, d + 1, ()))) % d) < length
        full = (keep_rows[:, None] | keep_cols[None, :]).float()[None]
        angle = self.rotate * (float(torch.randn(())) - 1.0)
        full = TF.rotate(full, angle, interpolation=TF.InterpolationMode.BILINEAR, fill=[1.0])
        top, left = (side - h) // 2, (side - w) // 2
        return full[0, top : top + h, left : left + w]

    def __call__(self, image: Tensor, boxes: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if float(torch.rand(())) >= self.prob:
            return image, boxes, labels
        m = self.mask(int(image.shape[-2]), int(image.shape[-1]))
        return (image.float() * m).round().clamp(0, 255).to(torch.uint8), boxes, labels
