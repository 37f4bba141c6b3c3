"""Detection AutoAugment (google/automl ``aug/autoaugment.py``): policies v0-v3 with box-aware ops.

Each image gets one sub-policy drawn uniformly; its ops run in order, each with its own
probability. Images are uint8 ``[3, H, W]`` at their original resolution (the pixel constants,
e.g. translate 250 px, are original-image pixels, as in the official pipeline); boxes are
``[M, 4]`` xyxy pixels. Geometric ops run through ``torchvision.transforms.v2`` with
``tv_tensors.BoundingBoxes``, so boxes are the hull of the moved corners, clipped to the image.
Differences from the official code: shear is about the image centre (torchvision), and a box
pushed off the image is dropped instead of kept as a border sliver (see docs/augmentation.md).
Randomness comes from torch's global generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor
from torchvision import tv_tensors

__all__ = ["POLICIES", "AutoAugment", "drop_degenerate"]

FILL = [128.0, 128.0, 128.0]  # official fill of empty pixels
MAX_LEVEL = 10.0
Op = tuple[str, float, int]  # (name, probability, level 0..10)

_V1: list[list[Op]] = [
    [("TranslateX_BBox", 0.6, 4), ("Equalize", 0.8, 10)],
    [("TranslateY_Only_BBoxes", 0.2, 2), ("Cutout", 0.8, 8)],
    [("Sharpness", 0.0, 8), ("ShearX_BBox", 0.4, 0)],
    [("ShearY_BBox", 1.0, 2), ("TranslateY_Only_BBoxes", 0.6, 6)],
    [("Rotate_BBox", 0.6, 10), ("Color", 1.0, 6)],
    [("Color", 0.0, 0), ("ShearX_Only_BBoxes", 0.8, 4)],
    [("ShearY_Only_BBoxes", 0.8, 2), ("Flip_Only_BBoxes", 0.0, 10)],
    [("Equalize", 0.6, 10), ("TranslateX_BBox", 0.2, 2)],
    [("Color", 1.0, 10), ("TranslateY_Only_BBoxes", 0.4, 6)],
    [("Rotate_BBox", 0.8, 10), ("Contrast", 0.0, 10)],
    [("Cutout", 0.2, 2), ("Brightness", 0.8, 10)],
    [("Color", 1.0, 6), ("Equalize", 1.0, 2)],
    [("Cutout_Only_BBoxes", 0.4, 6), ("TranslateY_Only_BBoxes", 0.8, 2)],
    [("Color", 0.2, 8), ("Rotate_BBox", 0.8, 10)],
    [("Sharpness", 0.4, 4), ("TranslateY_Only_BBoxes", 0.0, 4)],
    [("Sharpness", 1.0, 4), ("SolarizeAdd", 0.4, 4)],
    [("Rotate_BBox", 1.0, 8), ("Sharpness", 0.2, 8)],
    [("ShearY_BBox", 0.6, 10), ("Equalize_Only_BBoxes", 0.6, 8)],
    [("ShearX_BBox", 0.2, 6), ("TranslateY_Only_BBoxes", 0.2, 10)],
    [("SolarizeAdd", 0.6, 8), ("Brightness", 0.8, 10)],
]
_V2: list[list[Op]] = [
    [("Color", 0.0, 6), ("Cutout", 0.6, 8), ("Sharpness", 0.4, 8)],
    [("Rotate_BBox", 0.4, 8), ("Sharpness", 0.4, 2), ("Rotate_BBox", 0.8, 10)],
    [("TranslateY_BBox", 1.0, 8), ("AutoContrast", 0.8, 2)],
    [("AutoContrast", 0.4, 6), ("ShearX_BBox", 0.8, 8), ("Brightness", 0.0, 10)],
    [("SolarizeAdd", 0.2, 6), ("Contrast", 0.0, 10), ("AutoContrast", 0.6, 0)],
    [("Cutout", 0.2, 0), ("Solarize", 0.8, 8), ("Color", 1.0, 4)],
    [("TranslateY_BBox", 0.0, 4), ("Equalize", 0.6, 8), ("Solarize", 0.0, 10)],
    [("TranslateY_BBox", 0.2, 2), ("ShearY_BBox", 0.8, 8), ("Rotate_BBox", 0.8, 8)],
    [("Cutout", 0.8, 8), ("Brightness", 0.8, 8), ("Cutout", 0.2, 2)],
    [("Color", 0.8, 4), ("TranslateY_BBox", 1.0, 6), ("Rotate_BBox", 0.6, 6)],
    [("Rotate_BBox", 0.6, 10), ("BBox_Cutout", 1.0, 4), ("Cutout", 0.2, 8)],
    [("Rotate_BBox", 0.0, 0), ("Equalize", 0.6, 6), ("ShearY_BBox", 0.6, 8)],
    [("Brightness", 0.8, 8), ("AutoContrast", 0.4, 2), ("Brightness", 0.2, 2)],
    [("TranslateY_BBox", 0.4, 8), ("Solarize", 0.4, 6), ("SolarizeAdd", 0.2, 10)],
    [("Contrast", 1.0, 10), ("SolarizeAdd", 0.2, 8), ("Equalize", 0.2, 4)],
]
_V3: list[list[Op]] = [
    [("Posterize", 0.8, 2), ("TranslateX_BBox", 1.0, 8)],
    [("BBox_Cutout", 0.2, 10), ("Sharpness", 1.0, 8)],
    [("Rotate_BBox", 0.6, 8), ("Rotate_BBox", 0.8, 10)],
    [("Equalize", 0.8, 10), ("AutoContrast", 0.2, 10)],
    [("SolarizeAdd", 0.2, 2), ("TranslateY_BBox", 0.2, 8)],
    [("Sharpness", 0.0, 2), ("Color", 0.4, 8)],
    [("Equalize", 1.0, 8), ("TranslateY_BBox", 1.0, 8)],
    [("Posterize", 0.6, 2), ("Rotate_BBox", 0.0, 10)],
    [("AutoContrast", 0.6, 0), ("Rotate_BBox", 1.0, 6)],
    [("Equalize", 0.0, 4), ("Cutout", 0.8, 10)],
    [("Brightness", 1.0, 2), ("TranslateY_BBox", 1.0, 6)],
    [("Contrast", 0.0, 2), ("ShearY_BBox", 0.8, 0)],
    [("AutoContrast", 0.8, 10), ("Contrast", 0.2, 10)],
    [("Rotate_BBox", 1.0, 10), ("Cutout", 1.0, 10)],
    [("SolarizeAdd", 0.8, 6), ("Equalize", 0.8, 8)],
]
POLICIES: dict[str, list[list[Op]]] = {"v0": _V1[:5], "v1": _V1, "v2": _V2, "v3": _V3}


def _uniform(lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(()))


def _signed(x: float) -> float:
    """The official random sign of rotate / shear / translate magnitudes."""
    return -x if float(torch.rand(())) < 0.5 else x


def _blend_factor(level: int) -> float:
    return level / MAX_LEVEL * 1.8 + 0.1


def _cutout(image: Tensor, cy: int, cx: int, pad_h: int, pad_w: int) -> Tensor:
    """Fill a (2 pad_h) x (2 pad_w) square centred at (cy, cx), clipped at the edges, with gray 128."""
    h, w = image.shape[-2:]
    out = image.clone()
    out[:, max(0, cy - pad_h) : min(h, cy + pad_h), max(0, cx - pad_w) : min(w, cx + pad_w)] = 128
    return out


def _solarize_add(image: Tensor, add: int) -> Tensor:
    shifted = (image.to(torch.int16) + add).clamp(0, 255).to(torch.uint8)
    return torch.where(image < 128, shifted, image)


def _image_op(name: str, level: int) -> Callable[[Tensor], Tensor] | None:
    """The pixel-only ops (boxes unchanged), or None for a box-moving op."""
    f = _blend_factor(level)
    thr = int(level / MAX_LEVEL * 256)
    ops: dict[str, Callable[[Tensor], Tensor]] = {
        "AutoContrast": TF.autocontrast,
        "Equalize": TF.equalize,
        # int(L/10*4) bits; L=2 (v3) gives 0 bits, which torchvision defines as an all-black image
        "Posterize": lambda im: TF.posterize(im, int(level / MAX_LEVEL * 4)),
        # threshold 256 (L=10) inverts nothing
        "Solarize": lambda im: im if thr > 255 else TF.solarize(im, thr),
        "SolarizeAdd": lambda im: _solarize_add(im, int(level / MAX_LEVEL * 110)),
        "Color": lambda im: TF.adjust_saturation(im, f),
        "Contrast": lambda im: TF.adjust_contrast(im, f),
        "Brightness": lambda im: TF.adjust_brightness(im, f),
        "Sharpness": lambda im: TF.adjust_sharpness(im, f),
    }
    return ops.get(name)


def _geometric(image: Tensor, boxes: Tensor, kind: str, magnitude: float) -> tuple[Tensor, Tensor]:
    """Rotate (degrees, counter-clockwise), TranslateX/Y (pixels), ShearX/Y (factor) image and boxes."""
    h, w = int(image.shape[-2]), int(image.shape[-1])
    bbs = tv_tensors.BoundingBoxes(boxes.float(), format="XYXY", canvas_size=(h, w))
    angle, tx, ty, shear = 0.0, 0.0, 0.0, [0.0, 0.0]
    if kind == "Rotate":
        angle = magnitude
    elif kind == "TranslateX":
        tx = -magnitude  # the official op shifts by -pixels
    elif kind == "TranslateY":
        ty = -magnitude
    elif kind == "ShearX":
        shear[0] = math.degrees(math.atan(magnitude))
    else:
        shear[1] = math.degrees(math.atan(magnitude))
    args = dict(angle=angle, translate=[tx, ty], scale=1.0, shear=shear)
    out = TF.affine(image, **args, interpolation=TF.InterpolationMode.NEAREST, fill=FILL)
    moved = TF.affine(bbs, **args)
    return out, TF.clamp_bounding_boxes(moved).as_subclass(Tensor)


def _geometric_magnitude(kind: str, level: int, only_bboxes: bool) -> float:
    if kind == "Rotate":
        return _signed(level / MAX_LEVEL * 30.0)
    if kind.startswith("Translate"):
        return _signed(level / MAX_LEVEL * (120.0 if only_bboxes else 250.0))
    return _signed(level / MAX_LEVEL * 0.3)


def _bbox_cutout(image: Tensor, boxes: Tensor, level: int) -> Tensor:
    """Cut out a gray rectangle (<= 0.75 of the box's h and w) centred inside one random box."""
    if len(boxes) == 0:
        return image
    x0, y0, x1, y1 = boxes[int(torch.randint(len(boxes), ()))].tolist()
    frac = level / MAX_LEVEL * 0.75
    pad_h, pad_w = int(frac * (y1 - y0) / 2), int(frac * (x1 - x0) / 2)
    cy, cx = int(_uniform(y0, max(y0, y1 - 1))), int(_uniform(x0, max(x0, x1 - 1)))
    return _cutout(image, cy, cx, pad_h, pad_w)


def _only_bboxes(image: Tensor, boxes: Tensor, name: str, prob: float, level: int) -> Tensor:
    """Apply ``name`` to the pixels inside each box (each with probability prob / 3); boxes unchanged."""
    out = image.clone()
    h, w = image.shape[-2:]
    for i in torch.randperm(len(boxes)).tolist():
        if float(torch.rand(())) >= prob / 3.0:
            continue
        x0, y0, x1, y1 = boxes[i].tolist()
        x0, y0 = max(0, int(x0)), max(0, int(y0))
        x1, y1 = min(w, math.ceil(x1)), min(h, math.ceil(y1))
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        crop = out[:, y0:y1, x0:x1]
        kind = name.removesuffix("_Only_BBoxes")
        if kind == "Flip":
            crop = TF.horizontal_flip(crop)
        elif kind == "Cutout":
            pad = int(level / MAX_LEVEL * 50)
            cy, cx = int(torch.randint(y1 - y0, ())), int(torch.randint(x1 - x0, ()))
            crop = _cutout(crop, cy, cx, pad, pad)
        elif kind in ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"):
            empty = torch.zeros((0, 4))
            crop, _ = _geometric(crop, empty, kind, _geometric_magnitude(kind, level, True))
        else:
            crop = _image_op(kind, level)(crop)  # type: ignore[misc]
        out[:, y0:y1, x0:x1] = crop
    return out


def apply_op(image: Tensor, boxes: Tensor, name: str, prob: float, level: int) -> tuple[Tensor, Tensor]:
    """One policy op on uint8 ``[3, H, W]`` and ``[M, 4]`` xyxy boxes (boxes may move, never multiply)."""
    if name.endswith("_Only_BBoxes"):  # outer probability forced to 1; prob/3 per box inside
        return _only_bboxes(image, boxes, name, prob, level), boxes
    if float(torch.rand(())) >= prob:
        return image, boxes
    pixel_op = _image_op(name, level)
    if pixel_op is not None:
        return pixel_op(image), boxes
    if name == "Cutout":
        h, w = image.shape[-2:]
        pad = int(level / MAX_LEVEL * 100)
        return _cutout(image, int(torch.randint(h, ())), int(torch.randint(w, ())), pad, pad), boxes
    if name == "BBox_Cutout":
        return _bbox_cutout(image, boxes, level), boxes
    kind = name.removesuffix("_BBox")
    return _geometric(image, boxes, kind, _geometric_magnitude(kind, level, False))


def drop_degenerate(boxes: Tensor, labels: Tensor, min_size: float = 1.0) -> tuple[Tensor, Tensor]:
    """Keep boxes at least ``min_size`` px wide and high (with their labels)."""
    keep = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
    return boxes[keep], labels[keep]


class AutoAugment:
    """``AutoAugment("v0")(image, boxes, labels) -> (image, boxes, labels)``; see the module doc."""

    def __init__(self, policy: str) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown AutoAugment policy {policy!r}; valid: {', '.join(POLICIES)}")
        self.policy = policy
        self.sub_policies = POLICIES[policy]

    def __call__(self, image: Tensor, boxes: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        sub = self.sub_policies[int(torch.randint(len(self.sub_policies), ()))]
        boxes = boxes.float()
        for name, prob, level in sub:
            image, boxes = apply_op(image, boxes, name, prob, level)
        boxes, labels = drop_degenerate(boxes, labels)
        return image, boxes, labels
