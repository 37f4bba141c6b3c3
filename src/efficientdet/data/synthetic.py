"""Synthetic detection data: filled shapes on noisy backgrounds, written as JPEG + COCO JSON.

Meant for demos, smoke tests and "does training converge" checks: each class has its own
shape and base colour, boxes are exactly tight around the drawn pixels, and the output is
fully determined by the seed (image ``i`` uses its own generator, so changing
``num_images`` does not change the earlier images).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["SHAPES", "make_synthetic_dataset"]

SHAPES = ("circle", "square", "triangle", "ellipse", "rectangle", "diamond", "hexagon", "star", "cross")
# Saturated, well-separated base colours (RGB); backgrounds are kept muted.
_PALETTE = (
    (220, 40, 40), (40, 170, 60), (50, 80, 225), (235, 200, 30), (175, 50, 200),
    (30, 200, 205), (245, 130, 30), (240, 240, 240), (20, 20, 20),
)
SizeSpec = int | tuple[int, int] | tuple[tuple[int, int], tuple[int, int]]
_Box = tuple[int, int, int, int]


def make_synthetic_dataset(
    out_dir: str | os.PathLike[str],
    num_images: int = 64,
    image_size: SizeSpec = (256, 256),
    classes: Sequence[str] = ("circle", "square", "triangle"),
    max_objects: int = 4,
    min_objects: int = 1,
    object_scale: tuple[float, float] = (0.08, 0.4),
    seed: int = 0,
    val_fraction: float = 0.0,
    jpeg_quality: int = 92,
    overwrite: bool = False,
    object_size: tuple[int, int] | None = None,
) -> Path:
    """Write ``out_dir/images/*.jpg`` and ``out_dir/train.json`` (+ ``val.json``); return train.json.

    Args:
        image_size: ``(h, w)``, one int for square images, or ``((h_min, h_max), (w_min, w_max))``
            for sizes drawn per image (inclusive).
        classes: shape names from :data:`SHAPES`, one per class (category ids 1..K).
        max_objects, min_objects: objects per image, drawn uniformly (0 allows background images).
        object_scale: object side as a fraction of the shorter image side, drawn uniformly.
        val_fraction: the last ``round(num_images * val_fraction)`` images go to ``val.json``.
        overwrite: replace an existing ``train.json`` (and remove a ``val.json`` this call does not
            write); otherwise that is an error.
        object_size: ``(min, max)`` object side in pixels, drawn uniformly; overrides
            ``object_scale`` (small objects in large images: ``image_size=(1080, 1920)``,
            ``object_size=(8, 32)``, ``max_objects=40``).

    Boxes are xywh in the JSON, tight around the shape's pixels (in continuous pixel
    coordinates: a shape covering columns 3..7 has x=3, w=5). Shapes do not overlap.
    """
    out = Path(out_dir)
    (h_lo, h_hi), (w_lo, w_hi) = _size_range(image_size)
    _check_options(
        classes, num_images, min_objects, max_objects, object_scale, object_size, min(h_lo, w_lo), val_fraction
    )
    train_json = out / "train.json"
    if train_json.exists() and not overwrite:
        raise FileExistsError(f"{train_json} exists; pass overwrite=True to replace it")
    (out / "images").mkdir(parents=True, exist_ok=True)

    num_val = round(num_images * val_fraction)
    splits: dict[str, dict[str, list[dict[str, object]]]] = {
        name: {"images": [], "annotations": []} for name in ("train", "val")
    }
    for i in range(num_images):
        rng = np.random.default_rng([seed, i])
        h, w = int(rng.integers(h_lo, h_hi + 1)), int(rng.integers(w_lo, w_hi + 1))
        scale = object_scale if object_size is None else (object_size[0] / min(h, w), object_size[1] / min(h, w))
        image, objects = _render(rng, h, w, classes, min_objects, max_objects, scale)
        file_name = f"images/{i:06d}.jpg"
        Image.fromarray(image).save(out / file_name, quality=jpeg_quality)
        _add_image(splits["val" if i >= num_images - num_val else "train"], i + 1, file_name, w, h, objects)
    categories = [{"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(classes)]
    for name, split in splits.items():
        if name == "train" or num_val > 0:
            (out / f"{name}.json").write_text(json.dumps({**split, "categories": categories}), encoding="utf-8")
        elif overwrite:  # an earlier val.json would name images that are now training images
            (out / f"{name}.json").unlink(missing_ok=True)
    return train_json


def _check_options(
    classes: Sequence[str],
    num_images: int,
    min_objects: int,
    max_objects: int,
    object_scale: tuple[float, float],
    object_size: tuple[int, int] | None,
    min_side: int,
    val_fraction: float,
) -> None:
    """ValueError for the first option of :func:`make_synthetic_dataset` out of its range."""
    unknown = [c for c in classes if c not in SHAPES]
    if not classes or unknown:
        raise ValueError(f"classes must be shape names from {SHAPES}; unknown: {unknown or 'none given'}")
    if num_images < 1 or not 0 <= min_objects <= max_objects:
        raise ValueError("need num_images >= 1 and 0 <= min_objects <= max_objects")
    if not 0.0 < object_scale[0] <= object_scale[1] <= 1.0:
        raise ValueError(f"object_scale must satisfy 0 < lo <= hi <= 1, got {object_scale}")
    if object_size is not None and not 4 <= object_size[0] <= object_size[1] <= min_side:
        raise ValueError(f"object_size must satisfy 4 <= lo <= hi <= the smallest image side, got {object_size}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")


def _add_image(
    split: dict[str, list[dict[str, object]]],
    image_id: int,
    file_name: str,
    w: int,
    h: int,
    objects: list[tuple[int, _Box, int]],
) -> None:
    """Append one image and its objects (xywh bbox, category id = label + 1) to a COCO ``split``."""
    split["images"].append({"id": image_id, "file_name": file_name, "width": w, "height": h})
    for label, (x0, y0, x1, y1), area in objects:
        split["annotations"].append({
            "id": len(split["annotations"]) + 1, "image_id": image_id, "category_id": label + 1,
            "bbox": [x0, y0, x1 - x0, y1 - y0], "area": area, "iscrowd": 0,
        })


def _size_range(spec: SizeSpec) -> tuple[tuple[int, int], tuple[int, int]]:
    # Variable length: the unpacking below is what rejects (lo, hi) ranges of another length.
    ranges: tuple[tuple[int, ...], tuple[int, ...]]
    if isinstance(spec, int):
        ranges = ((spec, spec), (spec, spec))
    elif isinstance(spec[0], int) and isinstance(spec[1], int):
        ranges = ((spec[0], spec[0]), (spec[1], spec[1]))
    else:
        ranges = (tuple(spec[0]), tuple(spec[1]))
    (h_lo, h_hi), (w_lo, w_hi) = ranges
    if not (16 <= h_lo <= h_hi and 16 <= w_lo <= w_hi):
        raise ValueError(f"image_size must be >= 16 pixels with lo <= hi, got {spec}")
    return (int(h_lo), int(h_hi)), (int(w_lo), int(w_hi))


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Muted base colour + smooth low-frequency blobs + a gradient + pixel noise, float HWC."""
    base = rng.uniform(70, 180, size=3)
    blobs = rng.normal(0, 25, size=(4, 4, 3)).astype(np.float32)
    # Bicubic upsampling of a 4x4 grid per channel gives smooth texture cheaply.
    smooth = np.stack(
        [np.asarray(Image.fromarray(blobs[..., c]).resize((w, h), Image.Resampling.BICUBIC)) for c in range(3)], -1
    )
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = (np.cos(angle) * xx / w + np.sin(angle) * yy / h)[..., None] * rng.uniform(-40, 40)
    noise = rng.normal(0, 8, size=(h, w, 3))
    return base + smooth + ramp + noise


def _polygon(rng: np.random.Generator, shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    """Vertices of a shape inscribed in the circle (cx, cy, r); None for ellipse-type shapes."""
    turn = rng.uniform(0, 2 * math.pi)
    if shape == "square":
        turn = math.pi / 4 + rng.uniform(-0.25, 0.25)  # near axis-aligned
        n, radii = 4, [r]
    elif shape == "diamond":
        turn, n, radii = rng.uniform(-0.15, 0.15), 4, [r]
    elif shape == "triangle":
        n, radii = 3, [r]
    elif shape == "hexagon":
        n, radii = 6, [r]
    elif shape == "star":
        n, radii = 10, [r, r * 0.45]
    elif shape == "rectangle":
        aspect = rng.uniform(0.35, 0.7)
        half = (r * math.cos(math.atan(aspect)), r * math.sin(math.atan(aspect)))
        if rng.random() < 0.5:
            half = half[::-1]
        return [(cx - half[0], cy - half[1]), (cx + half[0], cy - half[1]), (cx + half[0], cy + half[1]), (cx - half[0], cy + half[1])]
    elif shape == "cross":
        a, b = r * 0.9, r * 0.3
        pts = [(b, a), (b, b), (a, b), (a, -b), (b, -b), (b, -a), (-b, -a), (-b, -b), (-a, -b), (-a, b), (-b, b), (-b, a)]
        c, s = math.cos(turn / 8), math.sin(turn / 8)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]
    else:
        return None
    return [
        (cx + radii[k % len(radii)] * math.cos(turn + 2 * math.pi * k / n),
         cy + radii[k % len(radii)] * math.sin(turn + 2 * math.pi * k / n))
        for k in range(n)
    ]


def _render(
    rng: np.random.Generator, h: int, w: int, classes: Sequence[str], min_objects: int, max_objects: int,
    scale: tuple[float, float],
) -> tuple[np.ndarray, list[tuple[int, _Box, int]]]:
    """One image (uint8 HWC) and its objects ``(label, tight xyxy box, pixel area)``."""
    canvas = _background(rng, h, w)
    placed: list[tuple[float, float, float, float]] = []
    objects: list[tuple[int, _Box, int]] = []
    for _ in range(int(rng.integers(min_objects, max_objects + 1))):
        label = int(rng.integers(len(classes)))
        side = rng.uniform(*scale) * min(h, w)
        for _attempt in range(30):  # rejection sampling keeps shapes apart
            x0, y0 = rng.uniform(0, w - side), rng.uniform(0, h - side)
            cand = (x0 - 2, y0 - 2, x0 + side + 2, y0 + side + 2)
            if all(cand[2] <= p[0] or p[2] <= cand[0] or cand[3] <= p[1] or p[3] <= cand[1] for p in placed):
                break
        else:
            continue  # no room left: fewer objects in this image
        placed.append(cand)
        # The mask is drawn in a window around the shape (integer offset), not the whole image:
        # large images with many objects would otherwise cost a full-size mask per object.
        ox, oy = max(0, int(x0) - 2), max(0, int(y0) - 2)
        ww, wh = min(w, int(x0 + side) + 3) - ox, min(h, int(y0 + side) + 3) - oy
        mask_img = Image.new("L", (ww, wh), 0)
        draw = ImageDraw.Draw(mask_img)
        cx, cy, r = x0 - ox + side / 2, y0 - oy + side / 2, side / 2
        points = _polygon(rng, classes[label], cx, cy, r)
        if points is not None:
            draw.polygon(points, fill=255)
        else:
            ry = r if classes[label] == "circle" else r * rng.uniform(0.45, 0.75)
            rx, ry = (r, ry) if rng.random() < 0.5 else (ry, r)
            draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=255)
        mask = np.asarray(mask_img) > 0
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        if rows.size == 0:
            continue
        colour = np.clip(np.array(_PALETTE[label % len(_PALETTE)]) + rng.uniform(-25, 25, 3), 0, 255)
        shade = rng.normal(0, 5, size=(int(mask.sum()), 3))
        canvas[oy : oy + wh, ox : ox + ww][mask] = colour + shade
        box = (ox + int(cols[0]), oy + int(rows[0]), ox + int(cols[-1]) + 1, oy + int(rows[-1]) + 1)
        objects.append((label, box, int(mask.sum())))
    return np.clip(canvas, 0, 255).astype(np.uint8), objects
