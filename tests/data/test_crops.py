"""Sliced-training crops: boxes clipped to the crop, slivers dropped, scale of a tile."""

from __future__ import annotations

import torch

from efficientdet.data.crops import CropTransform, crop_boxes


def test_crop_boxes_clips_and_drops_slivers() -> None:
    boxes = torch.tensor([
        [10.0, 10.0, 30.0, 30.0],  # inside
        [90.0, 10.0, 110.0, 30.0],  # half inside on the right: 10x20 of 20x20 kept
        [99.0, 50.0, 120.0, 70.0],  # a 1-px sliver: dropped
        [60.0, 95.0, 80.0, 200.0],  # 5 of 105 px high visible: under 30% -> dropped
        [200.0, 200.0, 220.0, 220.0],  # outside
    ])  # fmt: skip
    out, keep = crop_boxes(boxes, left=0, top=0, width=100, height=100)
    assert keep.tolist() == [True, True, False, False, False]
    assert out.tolist() == [[10, 10, 30, 30], [90, 10, 100, 30]]
    shifted, _ = crop_boxes(boxes[:1], left=5, top=8, width=100, height=100)
    assert shifted.tolist() == [[5, 2, 25, 22]]


def test_crop_transform_keeps_full_resolution_and_box_pixels() -> None:
    torch.manual_seed(0)
    image = torch.zeros(3, 400, 600, dtype=torch.uint8)
    image[:, 200:216, 300:324] = 255  # one 24x16 object
    boxes, labels = torch.tensor([[300.0, 200.0, 324.0, 216.0]]), torch.tensor([1])
    transform = CropTransform(128, crop_size=128, scale_range=(1.0, 1.0), hflip=0.0)
    seen = whole = 0
    for _ in range(20):
        canvas, out, lab, content = transform(image, boxes, labels)
        assert canvas.shape == (3, 128, 128) and content == (128, 128)
        for (x0, y0, x1, y1), label in zip(out.tolist(), lab.tolist()):
            assert label == 1 and x1 - x0 <= 24 and y1 - y0 <= 16  # scale 1: never enlarged
            assert canvas[:, int(y0) : int(y1), int(x0) : int(x1)].float().mean() == 255
            seen += 1
            whole += (x1 - x0, y1 - y0) == (24, 16)
    # the object was in some of the crops (9 of 20 here), whole in some: the checks above ran
    assert seen > 0 and whole > 0
