"""Box utilities. The library's single internal box format is xyxy in pixels."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_area as _tv_box_area
from torchvision.ops import box_convert
from torchvision.ops import box_iou as _tv_box_iou

__all__ = [
    "box_area",
    "box_iou",
    "clip_boxes",
    "cxcywh_to_xyxy",
    "xywh_to_xyxy",
    "xyxy_to_cxcywh",
    "xyxy_to_xywh",
]


def box_area(boxes: Tensor) -> Tensor:
    """Areas of xyxy boxes: [N, 4] -> [N]."""
    return _tv_box_area(boxes)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU of xyxy boxes: a [N, 4], b [M, 4] -> [N, M].

    Two zero-area boxes have union 0; torchvision returns NaN for them, which would poison
    soft-NMS score products, so such pairs get IoU 0 instead.
    """
    return _tv_box_iou(a, b).nan_to_num(nan=0.0)


def clip_boxes(boxes: Tensor, height: float, width: float) -> Tensor:
    """Clip xyxy boxes [..., 4] to the image [0, width] x [0, height]; returns a new tensor."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack(
        [x0.clamp(0, width), y0.clamp(0, height), x1.clamp(0, width), y1.clamp(0, height)], dim=-1
    )


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(x, y, w, h) [..., 4] -> (x0, y0, x1, y1) [..., 4]."""
    return box_convert(boxes, "xywh", "xyxy")


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """(x0, y0, x1, y1) [..., 4] -> (x, y, w, h) [..., 4]."""
    return box_convert(boxes, "xyxy", "xywh")


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(cx, cy, w, h) [..., 4] -> (x0, y0, x1, y1) [..., 4]."""
    return box_convert(boxes, "cxcywh", "xyxy")


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """(x0, y0, x1, y1) [..., 4] -> (cx, cy, w, h) [..., 4]."""
    return box_convert(boxes, "xyxy", "cxcywh")
