"""Draw detections on an image: one fixed colour per class, "name 0.87" labels on filled tags."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from efficientdet.data.images import ImageSource, load_image

__all__ = ["PALETTE", "class_colour", "draw_detections"]

# 20 well-separated, saturated colours (RGB); class k gets PALETTE[k % 20]. Fixed, so a class
# keeps its colour across images, runs and videos.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 56, 56), (72, 249, 10), (0, 194, 255), (255, 178, 29), (207, 210, 49),
    (146, 204, 23), (61, 219, 134), (26, 147, 52), (0, 212, 187), (44, 153, 168),
    (52, 69, 147), (100, 115, 255), (0, 24, 236), (132, 56, 255), (82, 0, 133),
    (203, 56, 255), (255, 149, 200), (255, 157, 151), (255, 112, 31), (199, 55, 255),
)  # fmt: skip


def class_colour(label: int) -> tuple[int, int, int]:
    """The palette colour of class ``label`` (0-based)."""
    return PALETTE[int(label) % len(PALETTE)]


def _text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    # Perceived luminance (ITU-R BT.601): dark text on light tags, white on dark ones.
    r, g, b = background
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


def _as_numpy(x: Any, dtype: type, tail: tuple[int, ...] = ()) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x if x is not None else [], dtype=dtype).reshape(-1, *tail)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: scalable
    except (TypeError, OSError, ImportError):  # old Pillow or no FreeType: fixed bitmap font
        return ImageFont.load_default()


def _to_pil(image: ImageSource) -> Image.Image:
    # load_image applies EXIF orientation, converts any mode/array/tensor to uint8 RGB and
    # makes a copy for files and PIL images, so the caller's image is never drawn on.
    array = load_image(image, max_pixels=None).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(array), mode="RGB")


def draw_detections(
    image: ImageSource,
    detections: Mapping[str, Any],
    class_names: Sequence[str] | None = None,
    score_threshold: float = 0.0,
    line_width: int | None = None,
    font_size: int | None = None,
    show_scores: bool = True,
) -> Image.Image:
    """Return a new RGB PIL image: ``image`` with ``detections`` drawn on it.

    Args:
        image: a path, PIL image, HWC array or CHW tensor (see ``load_image``; EXIF
            orientation is applied, so boxes from ``Detector`` line up).
        detections: a ``Detector`` result: ``boxes`` [M, 4] xyxy pixels of this image,
            ``scores`` [M], ``labels`` [M] 0-based, optional ``names`` (M strings).
        class_names: names by label, used when ``detections`` has no ``names``; without
            either the label number is shown.
        score_threshold: boxes scoring below it are not drawn.
        line_width, font_size: pixels; default scaled to the image size.
        show_scores: False draws the class name only (ground truth, e.g. ``efficientdet browse``).

    Lower-scored boxes are drawn first, so the best ones end up on top. Each label tag sits
    just above its box, or inside the box when there is no room above it (box at the top
    edge), and is shifted left where it would stick out of the right edge.
    """
    canvas = _to_pil(image)
    w, h = canvas.size
    boxes, scores, labels, names = _detection_arrays(detections)
    keep = np.flatnonzero(scores >= score_threshold)
    keep = keep[np.argsort(scores[keep], kind="stable")]  # ascending: best drawn last, on top
    if keep.size == 0:
        return canvas
    # ~2 px at 640x480, ~5 px at 1920x1080; text about 3% of the shorter side.
    lw = int(line_width) if line_width is not None else max(1, round(0.0015 * (w + h)))
    fs = int(font_size) if font_size is not None else max(10, round(0.03 * min(w, h)))
    font = _font(fs)
    pad = max(1, lw // 2 + 1)

    draw = ImageDraw.Draw(canvas)
    for (x0, y0, x1, y1), i in zip(_pixel_boxes(boxes[keep], w, h).tolist(), keep.tolist()):
        label = int(labels[i])
        colour = class_colour(label)
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=lw)
        name = _label_name(i, label, names, class_names)
        text = f"{name} {scores[i]:.2f}" if show_scores else name
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left + 2 * pad, bottom - top + 2 * pad
        tx = max(0, min(x0, w - tw))
        ty = y0 - th if y0 - th >= 0 else min(y0, max(0, h - th))  # above, else inside the box
        draw.rectangle((tx, ty, tx + tw - 1, ty + th - 1), fill=colour)
        draw.text((tx + pad - left, ty + pad - top), text, fill=_text_colour(colour), font=font)
    return canvas


def _detection_arrays(detections: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, Sequence[Any] | None]:
    """``(boxes [M, 4] float64, scores [M] float64, labels [M] int64, names or None)``; ValueError
    if their lengths differ."""
    boxes = _as_numpy(detections.get("boxes"), np.float64, (4,))
    scores = _as_numpy(detections.get("scores"), np.float64)
    labels = _as_numpy(detections.get("labels"), np.int64)
    if not len(boxes) == len(scores) == len(labels):
        raise ValueError(f"boxes, scores, labels lengths differ: {len(boxes)}, {len(scores)}, {len(labels)}")
    names = detections.get("names")
    if names is not None and len(names) != len(labels):
        raise ValueError(f"{len(names)} names for {len(labels)} detections")
    return boxes, scores, labels, names


def _pixel_boxes(boxes: np.ndarray, w: int, h: int) -> np.ndarray:
    """Continuous xyxy [K, 4] -> the first and last covered pixel (a box 20..60 covers columns
    20..59), clipped to the ``w`` x ``h`` canvas: int64 [K, 4]. PIL draws outlines inward from these."""
    xyxy = np.round(np.clip(boxes, 0, [w, h, w, h])).astype(np.int64)
    xyxy[:, 2:] = np.maximum(xyxy[:, 2:] - 1, xyxy[:, :2])
    return np.minimum(xyxy, [w - 1, h - 1, w - 1, h - 1])


def _label_name(i: int, label: int, names: Sequence[Any] | None, class_names: Sequence[str] | None) -> str:
    """Detection ``i``'s name from ``names`` if given, else its class name, else the label number."""
    if names is not None:
        return str(names[i])
    if class_names is not None and 0 <= label < len(class_names):
        return str(class_names[label])
    return str(label)
