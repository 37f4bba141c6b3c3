"""Mosaic (4 images, YOLOv5 / Ultralytics) and mixup (YOLOv5 Beta(32, 32) blend) of training samples.

Images are uint8 ``[3, H, W]``, boxes ``[M, 4]`` xyxy pixels, labels ``[M]``. Box geometry goes
through ``torchvision.transforms.v2`` ``BoundingBoxes`` (resize), then plain offsets and clipping.
"""

from __future__ import annotations

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor
from torchvision import tv_tensors

from ..ops.boxes import clip_boxes

__all__ = ["mixup", "mosaic4"]

Sample = tuple[Tensor, Tensor, Tensor]  # (image, boxes, labels)
MOSAIC_FILL = 114  # Ultralytics' canvas gray


def _fit_long_side(image: Tensor, boxes: Tensor, s: int) -> tuple[Tensor, Tensor]:
    """Resize so the long side is s (aspect kept); boxes follow (torchvision v2)."""
    h, w = int(image.shape[-2]), int(image.shape[-1])
    r = s / max(h, w)
    nh, nw = max(1, round(h * r)), max(1, round(w * r))
    bbs = tv_tensors.BoundingBoxes(boxes.float(), format="XYXY", canvas_size=(h, w))
    image = TF.resize(image, [nh, nw], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return image, TF.resize(bbs, [nh, nw]).as_subclass(Tensor)


def _tile_coords(k: int, xc: int, yc: int, h: int, w: int, s2: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """YOLOv5 ``load_mosaic`` placement: (canvas x1, y1, x2, y2), (source x1, y1, x2, y2) of tile k."""
    if k == 0:  # top-left: bottom-right corner on the centre
        a = (max(xc - w, 0), max(yc - h, 0), xc, yc)
        b = (w - (a[2] - a[0]), h - (a[3] - a[1]), w, h)
    elif k == 1:  # top-right
        a = (xc, max(yc - h, 0), min(xc + w, s2), yc)
        b = (0, h - (a[3] - a[1]), min(w, a[2] - a[0]), h)
    elif k == 2:  # bottom-left
        a = (max(xc - w, 0), yc, xc, min(s2, yc + h))
        b = (w - (a[2] - a[0]), 0, w, min(a[3] - a[1], h))
    else:  # bottom-right
        a = (xc, yc, min(xc + w, s2), min(s2, yc + h))
        b = (0, 0, min(w, a[2] - a[0]), min(a[3] - a[1], h))
    return a, b


def mosaic4(
    samples: list[Sample], size: int, min_area_ratio: float = 0.0, min_size: float = 1.0, resize: bool = True
) -> Sample:
    """Four samples on a 2s x 2s canvas (gray 114) around a centre ~ U(s/2, 3s/2), cropped to its
    central s x s window (the YOLOv5 affine at scale 1, no translation).

    Each image is first resized to long side s (``resize=False``: pasted as it is, for tiles
    the caller cut to at most s x s at the scale it trains at). Boxes get the tile offset, are clipped to the
    window, and kept when at least ``min_size`` px wide and high and keeping more than
    ``min_area_ratio`` of their area. The defaults (1 px, 0) keep every object that covers a
    whole pixel boxed, as ``TrainTransform`` does (a sub-pixel sliver at an edge is dropped);
    YOLOv5's ``box_candidates`` uses 2 px and 0.1, which leaves visible slivers unlabelled.
    Returns uint8 [3, s, s], boxes [K, 4], labels [K].
    """
    if len(samples) != 4:
        raise ValueError(f"mosaic needs exactly 4 samples, got {len(samples)}")
    s, s2 = int(size), 2 * int(size)
    canvas = torch.full((3, s2, s2), MOSAIC_FILL, dtype=torch.uint8)
    xc = int(s / 2 + s * float(torch.rand(())))
    yc = int(s / 2 + s * float(torch.rand(())))
    all_boxes, all_labels = [], []
    for k, (image, boxes, labels) in enumerate(samples):
        if resize:
            image, boxes = _fit_long_side(image, boxes, s)
        h, w = int(image.shape[-2]), int(image.shape[-1])
        (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = _tile_coords(k, xc, yc, h, w, s2)
        canvas[:, ay0:ay1, ax0:ax1] = image[:, by0:by1, bx0:bx1]
        # Boxes are clipped to the part of the tile actually pasted (pixels outside it are gone).
        shifted = boxes + torch.tensor([ax0 - bx0, ay0 - by0] * 2, dtype=boxes.dtype)
        lo = torch.tensor([ax0, ay0, ax0, ay0], dtype=boxes.dtype)
        hi = torch.tensor([ax1, ay1, ax1, ay1], dtype=boxes.dtype)
        all_boxes.append(torch.maximum(torch.minimum(shifted, hi), lo))
        all_labels.append(labels)
        all_boxes[-1] = torch.cat([all_boxes[-1], (boxes[:, 2:] - boxes[:, :2]).prod(-1, keepdim=True)], 1)
    off = s // 2
    image = canvas[:, off : off + s, off : off + s].contiguous()
    stacked = torch.cat(all_boxes) if all_boxes else torch.zeros((0, 5))
    boxes = clip_boxes(stacked[:, :4] - off, s, s)
    labels = torch.cat(all_labels) if all_labels else torch.zeros((0,), dtype=torch.int64)
    wh = boxes[:, 2:] - boxes[:, :2]
    area_before = stacked[:, 4].clamp(min=1e-6)
    keep = (wh[:, 0] >= min_size) & (wh[:, 1] >= min_size) & (wh.prod(-1) / area_before > min_area_ratio)
    return image, boxes[keep], labels[keep]


def mixup(
    a: tuple[Tensor, Tensor, Tensor, tuple[int, int]], b: tuple[Tensor, Tensor, Tensor, tuple[int, int]]
) -> tuple[Tensor, Tensor, Tensor, tuple[int, int]]:
    """YOLOv5 mixup of two transformed samples on equal canvases: r * A + (1 - r) * B with
    r ~ Beta(32, 32); box lists concatenated; the content size is the union of both."""
    if a[0].shape != b[0].shape:
        raise ValueError(f"mixup needs equal canvases, got {tuple(a[0].shape)} and {tuple(b[0].shape)}")
    r = float(torch.distributions.Beta(32.0, 32.0).sample())
    image = (a[0].float() * r + b[0].float() * (1 - r)).round().clamp(0, 255).to(torch.uint8)
    content = (max(a[3][0], b[3][0]), max(a[3][1], b[3][1]))
    return image, torch.cat([a[1], b[1]]), torch.cat([a[2], b[2]]), content
