"""Boxes in model-input pixels: whole-image resize scale, tile scale and placement."""

from __future__ import annotations

import torch

from efficientdet.data.anchor_boxes import model_input_boxes
from efficientdet.data.records import DatasetIndex, DetectionRecord


def _index() -> DatasetIndex:
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0], [700.0, 330.0, 716.0, 346.0], [630.0, 0.0, 650.0, 10.0]])
    rec = DetectionRecord("a.jpg", boxes, torch.zeros(3, dtype=torch.int64), 1, width=800, height=400)
    return DatasetIndex([rec, DetectionRecord("b.jpg", torch.zeros(0, 4), torch.zeros(0), 2, 10, 10)], ["x"])


def test_whole_image_boxes_scale_as_the_resize() -> None:
    boxes, refs = model_input_boxes(_index(), (320, 320))  # 800x400 -> 320x160: scale 0.4
    assert boxes.tolist()[0] == [4.0, 8.0, 12.0, 24.0] and len(refs) == 3
    assert str(refs[1][0]) == "a.jpg" and refs[1][1].tolist() == [700, 330, 716, 346]


def test_tile_boxes_keep_full_resolution_inside_one_tile() -> None:
    boxes, _ = model_input_boxes(_index(), (320, 320), tile=320)
    # sizes unchanged (scale 1); positions modulo the tile, a box over a tile edge moved back inside
    assert boxes.tolist() == [[10, 20, 30, 60], [60, 10, 76, 26], [300, 0, 320, 10]]
    half, _ = model_input_boxes(_index(), (320, 320), tile=640)
    assert half.tolist()[0] == [5.0, 10.0, 15.0, 30.0]
