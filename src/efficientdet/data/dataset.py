"""A torch Dataset over a :class:`DatasetIndex`, tolerant of unreadable images."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from efficientdet.data.common import warn_issue

from ..ops.boxes import clip_boxes
from .images import DEFAULT_MAX_PIXELS, ImageError, load_for_model
from .records import DatasetIndex
from .reduced import full_size, image_pixels

__all__ = ["DetectionDataset", "Transform", "collate_detections"]

Transform = Callable[[Tensor, Tensor, Tensor], "tuple[Any, ...]"]  # (image, boxes, labels[, content (h, w)])
Sample = dict[str, Any]


class DetectionDataset(Dataset):
    """Images and boxes of a :class:`DatasetIndex`.

    ``dataset[i]`` is a dict ``{"image": uint8 [3, H, W] (with ``decode_size``, a detector's
    input size: a :class:`~efficientdet.data.reduced.ReducedImage` for a large JPEG, as
    detectors decode them), "boxes": float32 [M, 4] xyxy,
    "labels": int64 [M], "image_id": int, "orig_size": (h, w) before the transform,
    "path": str}``, or None when the image cannot be decoded (missing, corrupt, truncated):
    that warns (:class:`DataIssue`) and adds 1 to ``num_bad``. Use
    :func:`collate_detections`, which drops the Nones. With DataLoader workers each worker
    process counts its own ``num_bad``; the main process's copy stays 0.

    ``transform(image, boxes, labels) -> (image, boxes, labels)`` (augmentation, resizing)
    owns any box clipping; a 4th returned value (the (h, w) of the content at the top-left of a
    padded canvas, as :class:`~efficientdet.data.transforms.TrainTransform` returns) becomes
    ``sample["content_size"]``; without a transform, boxes are clipped to the decoded image and boxes
    left empty by that are dropped.
    """

    def __init__(
        self,
        index: DatasetIndex,
        transform: Transform | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        decode_size: tuple[int, int] | None = None,
    ) -> None:
        if decode_size is not None and transform is not None:
            raise ValueError("decode_size (reduced JPEG decodes, for a detector) applies without a transform only")
        self.index = index
        self.transform = transform
        self.max_pixels = max_pixels
        self.decode_size = decode_size
        self.num_bad = 0
        self.bad_paths: list[str] = []
        self._size_warned: set[int] = set()

    def __len__(self) -> int:
        return len(self.index.records)

    @property
    def class_names(self) -> list[str]:
        return self.index.class_names

    def __getitem__(self, i: int) -> Sample | None:
        rec = self.index.records[i]
        path = str(rec.image_path)
        try:
            image = load_for_model(rec.image_path, self.decode_size, max_pixels=self.max_pixels)
        except ImageError as exc:
            self.num_bad += 1
            self.bad_paths.append(path)
            warn_issue(f"{path}: record image_id={rec.image_id}: cannot load image ({exc.problem}); sample skipped")
            return None
        h, w = full_size(image)
        sized = rec.width is not None and rec.height is not None
        if sized and (rec.width, rec.height) != (w, h) and i not in self._size_warned:
            self._size_warned.add(i)  # once per record, not once per epoch
            # Swapped sides: a 90-degree EXIF orientation, which decoding applies and some tools ignore.
            why = " (sides swapped: the file's EXIF orientation turns it when decoded)" if (rec.width, rec.height) == (h, w) else ""
            warn_issue(
                f"{path}: record image_id={rec.image_id}: annotated size {rec.width}x{rec.height} "
                f"differs from the decoded {w}x{h} (WxH){why}; boxes kept as annotated"
            )
        boxes, labels = rec.boxes.clone(), rec.labels.clone()
        extra: dict[str, Any] = {}
        if self.transform is not None:
            out = self.transform(image_pixels(image), boxes, labels)  # in full: no decode_size here
            image, boxes, labels = out[:3]
            if len(out) == 4:  # the content's (h, w) on a padded canvas
                extra["content_size"] = (int(out[3][0]), int(out[3][1]))
            if boxes.ndim != 2 or boxes.shape[-1] != 4 or labels.shape != (boxes.shape[0],):
                raise ValueError(
                    f"transform returned boxes {tuple(boxes.shape)} and labels {tuple(labels.shape)}; "
                    "expected [M, 4] and [M]"
                )
        else:
            boxes = clip_boxes(boxes, h, w)
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            boxes, labels = boxes[keep], labels[keep]
        return {
            "image": image,
            "boxes": boxes,
            "labels": labels,
            "image_id": rec.image_id,
            "orig_size": (h, w),
            "path": path,
            **extra,
        }


def collate_detections(batch: list[Sample | None]) -> dict[str, Any]:
    """Batch samples, dropping None (unreadable images).

    Returns ``{"images": uint8 [B, 3, H, W], "boxes": list of [M_i, 4], "labels": list of
    [M_i], "image_ids": list[int], "orig_sizes": list[(h, w)], "paths": list[str]}`` (plus
    ``"content_sizes"`` when the samples carry a ``"content_size"``); B may
    be 0 (then ``images`` is ``[0, 3, 0, 0]``). All images must have the same size (make
    the transform resize/pad them).
    """
    samples = [s for s in batch if s is not None]
    if samples:
        shapes = {tuple(s["image"].shape) for s in samples}
        if len(shapes) > 1:
            raise ValueError(
                f"cannot stack images of different sizes {sorted(shapes)}; "
                "use a transform that resizes and pads them to one size"
            )
        images = torch.stack([s["image"] for s in samples])
    else:
        images = torch.empty((0, 3, 0, 0), dtype=torch.uint8)
    with_content = samples and all("content_size" in s for s in samples)
    extra = {"content_sizes": [s["content_size"] for s in samples]} if with_content else {}
    return {
        **extra,
        "images": images,
        "boxes": [s["boxes"] for s in samples],
        "labels": [s["labels"] for s in samples],
        "image_ids": [s["image_id"] for s in samples],
        "orig_sizes": [s["orig_size"] for s in samples],
        "paths": [s["path"] for s in samples],
    }
