"""Training and evaluation transforms: uint8 image + xyxy boxes in, fixed-size uint8 image out.

Geometry follows the official EfficientDet input pipeline: the image is resized keeping its
aspect ratio, kept at the top-left and padded at the bottom/right, so a model-input pixel maps
back to the original image by dividing by the scale. Boxes go through the same operations as
``torchvision.transforms.v2`` ``BoundingBoxes`` (format XYXY), so they follow the pixels exactly.

Padding colour: the mean colour in uint8, (124, 116, 104) = round(255 * (0.485, 0.456, 0.406)).
After normalisation it is ~0, which is what :func:`efficientdet.inference.preprocess.resize_and_pad` (and
so the Detector at inference) pads with; padding with black would show the network a border
colour during training that it never sees at test time.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

from efficientdet.ops.boxes import clip_boxes
from efficientdet.inference.preprocess import _check_image, _check_size

__all__ = ["MEAN_FILL", "EvalTransform", "TrainTransform", "fit_size"]

MEAN_FILL: tuple[int, int, int] = (124, 116, 104)


def fit_size(src_hw: tuple[int, int], dst_hw: tuple[float, float]) -> tuple[float, int, int]:
    """Aspect-preserving fit of ``src_hw`` (H, W) into ``dst_hw`` (h, w): ``(scale, new_h, new_w)``.

    ``scale = min(h / H, w / W)``, ``new = round(side * scale)`` clamped to [1, target side]:
    the same geometry as :func:`efficientdet.inference.preprocess.resize_and_pad` (``dst_hw`` may be
    fractional here, for the training scale jitter).
    """
    src_h, src_w = int(src_hw[0]), int(src_hw[1])
    h, w = dst_hw
    scale = min(h / src_h, w / src_w)
    # Clamp: float rounding must neither overflow the canvas nor collapse a thin image to 0 px.
    new_h = int(min(int(h), max(1, round(src_h * scale))))
    new_w = int(min(int(w), max(1, round(src_w * scale))))
    return scale, new_h, new_w


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
    content: Tensor, boxes: Tensor, labels: Tensor, out_hw: tuple[int, int], fill: Sequence[int]
) -> tuple[Tensor, Tensor, Tensor]:
    """Place content [3, ch, cw] at the top-left of a ``fill`` canvas; clip boxes, drop degenerate ones.

    Boxes are clipped to the content (not the padded canvas); a box narrower or lower than 1 px
    afterwards (outside the crop, or squeezed by a small scale) is dropped with its label.
    """
    ch, cw = int(content.shape[1]), int(content.shape[2])
    out = torch.empty((3, *out_hw), dtype=torch.uint8, device=content.device)
    if (ch, cw) != out_hw:  # one fill + one copy, no intermediate padded tensor
        out.copy_(torch.tensor(fill, dtype=torch.uint8, device=content.device).view(3, 1, 1).expand_as(out))
    out[:, :ch, :cw] = content
    boxes = clip_boxes(boxes.as_subclass(Tensor), ch, cw)
    keep = ((boxes[:, 2] - boxes[:, 0]) >= 1.0) & ((boxes[:, 3] - boxes[:, 1]) >= 1.0)
    return out, boxes[keep], labels[keep]


def _check_fill(fill: Sequence[int]) -> tuple[int, int, int]:
    if len(fill) != 3 or any(not 0 <= int(v) <= 255 for v in fill):
        raise ValueError(f"fill must be 3 values in 0..255 (RGB), got {tuple(fill)}")
    return (int(fill[0]), int(fill[1]), int(fill[2]))


class TrainTransform:
    """Official training augmentation: scale jitter + random crop/pad to ``image_size``, h-flip.

    Call with ``(image uint8 [3, H, W], boxes [M, 4] xyxy pixels, labels [M])``; returns
    ``(image uint8 [3, h, w], boxes [M', 4] float32, labels [M'])`` with ``(h, w) = image_size``.

    1. factor ~ U(scale_range); the image is resized keeping its aspect ratio to fit
       ``image_size * factor`` (``fit_size``);
    2. where larger than ``image_size``, a random crop (offset uniform over the excess, per axis);
    3. optional mild photometric jitter (``ColorJitter`` brightness/contrast/saturation 0.2) on
       the image content, before padding, so the padding stays the mean colour;
    4. horizontal flip with probability ``hflip`` (of the content, which then stays top-left:
       in distribution the same as the official flip of the source image);
    5. padding at the bottom/right with ``fill``; boxes clipped, degenerate boxes dropped.

    Randomness comes from torch's global generator: ``torch.manual_seed`` makes it repeatable.
    """

    def __init__(
        self,
        image_size: tuple[int, int] | int,
        scale_range: tuple[float, float] = (0.1, 2.0),
        hflip: float = 0.5,
        photometric: bool = False,
        fill: Sequence[int] = MEAN_FILL,
    ) -> None:
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        self.image_size = _check_size(image_size)
        lo, hi = float(scale_range[0]), float(scale_range[1])
        if not 0.0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < min <= max, got {tuple(scale_range)}")
        if not 0.0 <= hflip <= 1.0:
            raise ValueError(f"hflip must be a probability, got {hflip}")
        self.scale_range = (lo, hi)
        self.hflip = float(hflip)
        self.fill = _check_fill(fill)
        self.color_jitter: v2.ColorJitter | None = (
            v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2) if photometric else None
        )

    def __call__(self, image: Tensor, boxes: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        _check_image(image, "image")
        if labels.shape[:1] != boxes.shape[:1]:
            raise ValueError(f"got {boxes.shape[0]} boxes but {labels.shape[0]} labels")
        h, w = self.image_size
        lo, hi = self.scale_range
        factor = lo + (hi - lo) * float(torch.rand(()))
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
        return _pad_and_finish(image, bbs, labels, self.image_size, self.fill)


class EvalTransform:
    """Evaluation geometry: fit into ``image_size`` keeping the aspect ratio, pad bottom/right.

    Call with ``(image uint8 [3, H, W], boxes [M, 4], labels [M])``; returns ``(image uint8
    [3, h, w], boxes, labels, scale)`` where ``scale = min(h / H, w / W)`` as in
    :func:`efficientdet.inference.preprocess.resize_and_pad` (identical resized pixels; divide model-input
    coordinates by ``scale`` to get original ones). Boxes are clipped; degenerate ones dropped.
    """

    def __init__(self, image_size: tuple[int, int] | int, fill: Sequence[int] = MEAN_FILL) -> None:
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        self.image_size = _check_size(image_size)
        self.fill = _check_fill(fill)

    def __call__(self, image: Tensor, boxes: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor, float]:
        _check_image(image, "image")
        if labels.shape[:1] != boxes.shape[:1]:
            raise ValueError(f"got {boxes.shape[0]} boxes but {labels.shape[0]} labels")
        src_hw = (int(image.shape[1]), int(image.shape[2]))
        scale, new_h, new_w = fit_size(src_hw, self.image_size)
        image, bbs = _resize(image, _as_boxes(boxes, src_hw), new_h, new_w)
        out, boxes, labels = _pad_and_finish(image, bbs, labels, self.image_size, self.fill)
        return out, boxes, labels, scale
