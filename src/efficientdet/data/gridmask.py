"""GridMask (google/automl ``aug/gridmask.py``): zero a rotated grid of squares; boxes unchanged."""

from __future__ import annotations

import math

import torch
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
        """A bool [h, w] mask: True where the image is kept.

        The official code draws the grid on a 1.5 max(h, w) square, rotates it (bilinear) and
        crops the centre: ~45x the image's memory in float planes (3.3 GB for a 24 MP photo).
        Here each pixel is rotated back into that square's grid instead, the same stripes with
        hard edges, in a few h x w planes.
        """
        side = math.ceil(1.5 * max(h, w))
        lo, hi = int(min(0.5 * h, 0.3 * w)), int(max(0.5 * h, 0.3 * w))
        d = max(2, int(torch.randint(max(lo, 2), max(hi, 2) + 1, ())))
        length = min(max(int(d * self.ratio + 0.5), 1), d - 1)
        row_offset, col_offset = int(torch.randint(0, d + 1, ())), int(torch.randint(0, d + 1, ()))
        angle = math.radians(self.rotate * (float(torch.randn(())) - 1.0))
        # the image's pixels as the centre crop of the square, relative to the square's centre
        centre = (side - 1) / 2
        ys = torch.arange(h, dtype=torch.float32)[:, None] + ((side - h) // 2 - centre)
        xs = torch.arange(w, dtype=torch.float32)[None, :] + ((side - w) // 2 - centre)
        cos, sin = math.cos(angle), math.sin(angle)
        # the grid point each pixel shows after TF.rotate(grid, angle) (nearest: same stripes within 0.1%)
        rows = (cos * ys + sin * xs + centre).round_()
        keep = ((rows - row_offset) % d) < length
        del rows
        cols = (cos * xs - sin * ys + centre).round_()
        return keep | (((cols - col_offset) % d) < length)

    def __call__(self, image: Tensor, boxes: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if float(torch.rand(())) >= self.prob:
            return image, boxes, labels
        m = self.mask(int(image.shape[-2]), int(image.shape[-1]))
        return image.masked_fill(~m, 0), boxes, labels
