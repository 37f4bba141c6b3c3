"""Faster R-CNN box coding (ty, tx, th, tw) relative to anchors, as in official EfficientDet.

No scale factors (the official models use none). Boxes and anchors are xyxy pixels.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["decode", "encode"]

# exp() of larger codes would give boxes > 1e4 anchor sizes; clamping only prevents inf, such
# boxes are far outside the image and get clipped anyway.
_MAX_LOG_SIZE = math.log(1e4)
# The official encoder adds this to all sizes so degenerate boxes give finite codes.
_EPS = 1e-8


def _centre_size(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """xyxy [..., 4] -> (yc, xc, h, w), each [...]."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return (y0 + y1) / 2, (x0 + x1) / 2, y1 - y0, x1 - x0


def encode(boxes: Tensor, anchors: Tensor, eps: float = _EPS) -> Tensor:
    """Encode xyxy boxes [N, 4] against anchors [N, 4] (or broadcastable) -> codes [N, 4].

    Codes are (ty, tx, th, tw) = ((yc - yca)/ha, (xc - xca)/wa, log(h/ha), log(w/wa)), with
    ``eps`` added to every size first (the official guard against log(0) and division by 0).
    """
    yca, xca, ha, wa = _centre_size(anchors)
    yc, xc, h, w = _centre_size(boxes)
    ha, wa, h, w = ha + eps, wa + eps, h + eps, w + eps
    return torch.stack([(yc - yca) / ha, (xc - xca) / wa, torch.log(h / ha), torch.log(w / wa)], dim=-1)


def decode(codes: Tensor, anchors: Tensor) -> Tensor:
    """Decode codes [..., N, 4] (ty, tx, th, tw) with anchors [N, 4] (broadcastable) -> xyxy [..., N, 4]."""
    yca, xca, ha, wa = _centre_size(anchors)
    ty, tx, th, tw = codes.unbind(-1)
    # Same operation order as the official decoder so results match it bit for bit.
    w = torch.exp(tw.clamp(max=_MAX_LOG_SIZE)) * wa
    h = torch.exp(th.clamp(max=_MAX_LOG_SIZE)) * ha
    yc = ty * ha + yca
    xc = tx * wa + xca
    return torch.stack([xc - w / 2.0, yc - h / 2.0, xc + w / 2.0, yc + h / 2.0], dim=-1)
