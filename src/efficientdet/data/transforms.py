"""Training transform: uint8 image + xyxy boxes in, fixed-size uint8 canvas + its content size out.

Geometry follows the official EfficientDet input pipeline and is the one of
:mod:`efficientdet.inference.preprocess` (:func:`~efficientdet.inference.preprocess.fit_size`,
the same antialiased uint8 resize): the image is resized keeping its aspect ratio and kept at
the top-left of the canvas. The canvas's padding is never shown to the network as it is: the
trainer normalises with :func:`~efficientdet.inference.preprocess.normalize_batch`, which sets
everything outside the content to 0, exactly the border ``Detector`` and evaluation build.
Boxes go through the same operations as ``torchvision.transforms.v2`` ``BoundingBoxes``
(format XYXY), so they follow the pixels exactly.
"""

from __future__ import annotations

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

from efficientdet.inference.preprocess import check_image, check_size, fit_size
from efficientdet.ops.boxes import clip_boxes

__all__ = ["TrainTransform"]

def _as_boxes(boxes: Tensor, canvas_hw: tuple[int, int]) -> tv_tensors.BoundingBoxes:
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be [M, 4] xyxy, got {tuple(boxes.shape)}")
    return tv_tensors.BoundingBoxes(
        boxes.to(torch.float32), format=tv_tensors.BoundingBoxFormat.XYXY, canvas_size=canvas_hw
    )


def _resize(image: Tensor, boxes: tv_tensors.BoundingBoxes, new_h: int, new_w: int) -> tuple[Tensor, Tensor]:
    """Resize uint8 [3, H, W] (bilinear, antialiased, still uint8) and its boxes to (new_h, new_w)."""
    if (new_h, new_w) == tuple(image.shape[1:]):
        return image, boxes
    # Boxes scale by new/old per axis: exactly how the pixel grid is stretched.
    image = TF.resize(image, [new_h, new_w], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return image, TF.resize(boxes, [new_h, new_w])


def _pad_and_finish(
    content: Tensor, boxes: Tensor, labels: Tensor, out_hw: tuple[int, int]
) -> tuple[Tensor, Tensor, Tensor, tuple[int, int]]:
    """Place content [3, ch, cw] at the top-left of a zero canvas; clip boxes, drop degenerate ones.

    Boxes are clipped to the content (not the padded canvas); a box narrower or lower than 1 px
    afterwards (outside the crop, or squeezed by a small scale) is dropped with its label.
    Returns (canvas, boxes, labels, (ch, cw)).
    """
    ch, cw = int(content.shape[1]), int(content.shape[2])
    if (ch, cw) == out_hw:
        out = content.contiguous()
    else:
        out = content.new_zeros((3, *out_hw))
        out[:, :ch, :cw] = content
    boxes = clip_boxes(boxes.as_subclass(Tensor), ch, cw)
    keep = ((boxes[:, 2] - boxes[:, 0]) >= 1.0) & ((boxes[:, 3] - boxes[:, 1]) >= 1.0)
    return out, boxes[keep], labels[keep], (ch, cw)


class TrainTransform:
    """Official training augmentation: scale jitter + random crop/pad to ``image_size``, h-flip.

    Call with ``(image uint8 [3, H, W], boxes [M, 4] xyxy pixels, labels [M])``; returns
    ``(image uint8 [3, h, w], boxes [M', 4] float32, labels [M'], (ch, cw))`` with
    ``(h, w) = image_size`` and the content at ``[:ch, :cw]`` (normalise with
    :func:`efficientdet.inference.preprocess.normalize_batch`, which zeroes the rest).

    1. factor ~ U(scale_range); the image is resized keeping its aspect ratio to fit
       ``image_size * factor`` (``fit_size``);
    2. where larger than ``image_size``, a random crop (offset uniform over the excess, per axis);
    3. optional mild photometric jitter (``ColorJitter`` brightness/contrast/saturation 0.2) on
       the image content, before padding;
    4. horizontal flip with probability ``hflip`` (of the content, which then stays top-left:
       in distribution the same as the official flip of the source image);
    5. padding at the bottom/right; boxes clipped, degenerate boxes dropped.

    Randomness comes from torch's global generator: ``torch.manual_seed`` makes it repeatable.
    """

    def __init__(
        self,
        image_size: tuple[int, int] | int,
        scale_range: tuple[float, float] = (0.1, 2.0),
        hflip: float = 0.5,
        photometric: bool = False,
    ) -> None:
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        self.image_size = check_size(image_size)
        lo, hi = float(scale_range[0]), float(scale_range[1])
        if not 0.0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < min <= max, got {tuple(scale_range)}")
        if not 0.0 <= hflip <= 1.0:
            raise ValueError(f"hflip must be a probability, got {hflip}")
        self.scale_range = (lo, hi)
        self.hflip = float(hflip)
        self.color_jitter: v2.ColorJitter | None = (
            v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2) if photometric else None
        )

    def __call__(self, image: Tensor, boxes: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor, tuple[int, int]]:
        factor = check_and_draw_scale(image, boxes, labels, self.scale_range)
        h, w = self.image_size
        _, new_h, new_w = fit_size((image.shape[1], image.shape[2]), (h * factor, w * factor))
        image, bbs = _resize(image, _as_boxes(boxes, (int(image.shape[1]), int(image.shape[2]))), new_h, new_w)

        # Random crop: offsets uniform over the excess (0 where the image already fits).
        ch, cw = min(h, new_h), min(w, new_w)
        top = int(torch.randint(0, new_h - ch + 1, ()))
        left = int(torch.randint(0, new_w - cw + 1, ()))
        if (ch, cw) != (new_h, new_w):
            image = image[:, top : top + ch, left : left + cw]
            bbs = TF.crop(bbs, top, left, ch, cw)

        if self.color_jitter is not None:
            image = self.color_jitter(image)
        if self.hflip > 0 and float(torch.rand(())) < self.hflip:
            image = TF.horizontal_flip(image)
            bbs = TF.horizontal_flip(bbs)
        return _pad_and_finish(image, bbs, labels, self.image_size)


def check_and_draw_scale(image: Tensor, boxes: Tensor, labels: Tensor, scale_range: tuple[float, float]) -> float:
    """Check a training sample (uint8 [3, H, W] image, [M, 4] boxes, [M] labels) and draw its
    scale-jitter factor uniformly from ``scale_range`` (shared by every training transform)."""
    check_image(image, "image")
    if labels.shape[:1] != boxes.shape[:1]:
        raise ValueError(f"got {boxes.shape[0]} boxes but {labels.shape[0]} labels")
    lo, hi = scale_range
    return lo + (hi - lo) * float(torch.rand(()))
