"""Sliced training: crops at (near) full resolution instead of the whole image resized.

A model that will see an image as ``tile`` x ``tile`` slices (``SlicedDetector``) should learn
objects at that scale: :class:`CropTransform` cuts a ``crop_size`` x ``crop_size`` window (side
jittered by ``1 / factor``, factor ~ U(scale_range)) out of the full-resolution image, resizes it
to the model input, clips boxes to it and drops slivers: boxes left narrower or lower than
``min_side`` pixels, or with less than ``min_visible`` of their area inside the crop. Half the
crops are placed to contain a random object (small objects are sparse in large images), the
others uniformly. Output as :class:`~efficientdet.data.transforms.TrainTransform`.
"""

from __future__ import annotations

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

from efficientdet.data.transforms import check_and_draw_scale
from efficientdet.inference.preprocess import check_size, fit_size
from efficientdet.ops.boxes import clip_boxes

__all__ = ["CropTransform", "crop_boxes"]


def crop_boxes(
    boxes: Tensor, left: int, top: int, width: int, height: int, min_side: float = 2.0, min_visible: float = 0.3
) -> tuple[Tensor, Tensor]:
    """Boxes [M, 4] xyxy -> (boxes in the crop's pixels, clipped, [M'] , keep mask [M]).

    A box is kept when its clipped width and height are at least ``min_side`` and at least
    ``min_visible`` of its area lies inside the crop."""
    shifted = boxes - torch.tensor([left, top, left, top], dtype=boxes.dtype)
    clipped = clip_boxes(shifted, float(height), float(width))
    cw, ch = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=1e-9)
    keep = (cw >= min_side) & (ch >= min_side) & (cw * ch >= min_visible * area)
    return clipped[keep], keep


def _offset(lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi] (hi < lo: lo)."""
    return lo if hi <= lo else int(torch.randint(lo, hi + 1, ()))


class CropTransform:
    """``(image uint8 [3, H, W], boxes [M, 4], labels [M])`` -> ``(canvas uint8 [3, h, w], boxes,
    labels, (ch, cw))`` with ``(h, w) = image_size``, the crop's content at the top-left."""

    def __init__(
        self,
        image_size: tuple[int, int] | int,
        crop_size: int,
        scale_range: tuple[float, float] = (0.8, 1.25),
        hflip: float = 0.5,
        photometric: bool = False,
        min_side: float = 2.0,
        min_visible: float = 0.3,
    ) -> None:
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        self.image_size = check_size(image_size)
        if crop_size < 16:
            raise ValueError(f"data.crop_size={crop_size}: must be at least 16 pixels")
        lo, hi = float(scale_range[0]), float(scale_range[1])
        if not 0.0 < lo <= hi:
            raise ValueError(f"data.crop_scale_range must satisfy 0 < min <= max, got {tuple(scale_range)}")
        self.crop_size, self.scale_range, self.hflip = int(crop_size), (lo, hi), float(hflip)
        self.min_side, self.min_visible = float(min_side), float(min_visible)
        self.color_jitter = v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2) if photometric else None

    def _window(self, boxes: Tensor, img_h: int, img_w: int, side: int) -> tuple[int, int, int, int]:
        """(left, top, width, height) of the crop: around a random object half the time."""
        cw, ch = min(side, img_w), min(side, img_h)
        if boxes.shape[0] and float(torch.rand(())) < 0.5:
            x0, y0, x1, y1 = boxes[int(torch.randint(0, boxes.shape[0], ()))].tolist()
            left = _offset(max(0, int(x1) - cw), min(int(x0), img_w - cw))
            top = _offset(max(0, int(y1) - ch), min(int(y0), img_h - ch))
        else:
            left, top = _offset(0, img_w - cw), _offset(0, img_h - ch)
        return left, top, cw, ch

    def cut(self, image: Tensor, boxes: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """A ``crop_size`` window of ``image`` at full resolution (around a random object half
        the time; smaller where the image is), boxes clipped as :meth:`__call__` clips them:
        the tiles of a mosaic when training on crops, so that it keeps the crops' scale."""
        img_h, img_w = int(image.shape[1]), int(image.shape[2])
        boxes = boxes.reshape(-1, 4).float()
        left, top, cw, ch = self._window(boxes, img_h, img_w, self.crop_size)
        kept, keep = crop_boxes(boxes, left, top, cw, ch, self.min_side, self.min_visible)
        return image[:, top : top + ch, left : left + cw], kept, labels[keep]

    def __call__(self, image: Tensor, boxes: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor, tuple[int, int]]:
        factor = check_and_draw_scale(image, boxes, labels, self.scale_range)
        h, w = self.image_size
        side = max(16, round(self.crop_size / factor))
        img_h, img_w = int(image.shape[1]), int(image.shape[2])
        left, top, cw, ch = self._window(boxes.reshape(-1, 4).float(), img_h, img_w, side)
        crop = image[:, top : top + ch, left : left + cw]
        kept, keep = crop_boxes(boxes.reshape(-1, 4).float(), left, top, cw, ch, self.min_side, self.min_visible)
        labels = labels[keep]
        # The crop's scale to the model input: that of a side x side tile (a crop cut short by
        # the image border is not stretched), as SlicedDetector's tiles are resized.
        scale = min(h, w) / side
        _, new_h, new_w = fit_size((ch, cw), (min(h, ch * scale), min(w, cw * scale)))
        bbs = tv_tensors.BoundingBoxes(kept, format=tv_tensors.BoundingBoxFormat.XYXY, canvas_size=(ch, cw))
        if (new_h, new_w) != (ch, cw):
            crop = TF.resize(crop, [new_h, new_w], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
            bbs = TF.resize(bbs, [new_h, new_w])
        if self.color_jitter is not None:
            crop = self.color_jitter(crop)
        if self.hflip > 0 and float(torch.rand(())) < self.hflip:
            crop, bbs = TF.horizontal_flip(crop), TF.horizontal_flip(bbs)
        out = crop.new_zeros((3, h, w))
        out[:, :new_h, :new_w] = crop
        boxes_out = clip_boxes(bbs.as_subclass(Tensor), new_h, new_w)
        ok = ((boxes_out[:, 2] - boxes_out[:, 0]) >= 1.0) & ((boxes_out[:, 3] - boxes_out[:, 1]) >= 1.0)
        return out, boxes_out[ok], labels[ok], (new_h, new_w)
