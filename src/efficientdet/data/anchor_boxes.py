"""A dataset's boxes as the model sees them: in model-input pixels after the resize (or the crop)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from efficientdet.data.images import ImageError, image_size_of
from efficientdet.data.records import DatasetIndex
from efficientdet.inference.preprocess import fit_size

__all__ = ["model_input_boxes"]


def model_input_boxes(
    index: DatasetIndex,
    image_size: tuple[int, int],
    tile: int | None = None,
    max_boxes: int | None = None,
    seed: int = 0,
) -> tuple[Tensor, list[tuple[Path, Tensor]]]:
    """Boxes [M, 4] xyxy in model-input pixels and, per box, (image file, original box).

    Whole-image mode scales each image as :func:`~efficientdet.inference.preprocess.fit_size`
    does; with ``tile`` (sliced training / inference) a ``tile`` x ``tile`` crop at full
    resolution is resized to ``image_size``, so every box scales by ``min(image_size) / tile``.
    ``max_boxes``: a random sample of at most that many boxes (seeded), for cheap checks.
    Image sizes come from the records, else from the image header (unreadable ones skipped).
    """
    records = [r for r in index.records if r.num_objects]
    if max_boxes is not None:
        order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed)).tolist()
        chosen, total = [], 0
        for i in order:
            if total >= max_boxes:
                break
            chosen.append(records[i])
            total += records[i].num_objects
        records = chosen
    out: list[Tensor] = []
    refs: list[tuple[Path, Tensor]] = []
    for rec in records:
        if tile is not None:
            scale = min(image_size) / tile
        else:
            if rec.height is not None and rec.width is not None:
                hw = (rec.height, rec.width)
            else:
                try:
                    hw = image_size_of(rec.image_path)
                except ImageError:
                    continue
            scale = fit_size(hw, (float(image_size[0]), float(image_size[1])))[0]
        boxes = rec.boxes
        if tile is not None:
            # Where a box falls in its tile depends on the crop: bring it into one tile (its
            # offset modulo the tile, moved back inside), so it lies on the anchor grid.
            origin = torch.floor(boxes[:, :2] / tile) * tile
            over = (boxes[:, 2:] - origin - tile).clamp(min=0)
            boxes = (boxes - (origin + over).repeat(1, 2)).clamp(min=0)
        out.append(boxes * scale)
        refs += [(rec.image_path, box) for box in rec.boxes]
    boxes = torch.cat(out) if out else torch.zeros((0, 4))
    if max_boxes is not None and boxes.shape[0] > max_boxes:
        keep = torch.randperm(boxes.shape[0], generator=torch.Generator().manual_seed(seed))[:max_boxes]
        boxes, refs = boxes[keep], [refs[i] for i in keep.tolist()]
    return boxes, refs
