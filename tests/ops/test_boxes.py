import torch

from efficientdet.ops.boxes import (
    box_area,
    box_iou,
    clip_boxes,
    cxcywh_to_xyxy,
    xywh_to_xyxy,
    xyxy_to_cxcywh,
    xyxy_to_xywh,
)


def test_box_area() -> None:
    boxes = torch.tensor([[0.0, 0.0, 10.0, 5.0], [2.0, 3.0, 2.0, 8.0]])
    assert torch.equal(box_area(boxes), torch.tensor([50.0, 0.0]))


def test_box_iou_known_values() -> None:
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # identical -> 1
            [20.0, 20.0, 30.0, 30.0],  # disjoint -> 0
            [10.0, 0.0, 20.0, 10.0],  # touching edge -> 0
            [5.0, 0.0, 15.0, 10.0],  # half overlap: 50 / 150 -> 1/3
            [0.0, 0.0, 5.0, 10.0],  # contained half -> 1/2
            [2.5, 2.5, 7.5, 7.5],  # contained quarter -> 1/4
        ]
    )
    expected = torch.tensor([[1.0, 0.0, 0.0, 1 / 3, 0.5, 0.25]])
    iou = box_iou(a, b)
    assert iou.shape == (1, 6)
    assert torch.allclose(iou, expected)
    assert torch.allclose(box_iou(b, a), expected.T)


def test_box_iou_shapes_and_degenerate() -> None:
    assert box_iou(torch.zeros(0, 4), torch.zeros(3, 4)).shape == (0, 3)
    point = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    iou = box_iou(point, point)  # union 0: defined as 0, never NaN
    assert iou.item() == 0.0


def test_clip_boxes() -> None:
    boxes = torch.tensor([[[-5.0, -1.0, 20.0, 8.0], [3.0, 4.0, 5.0, 30.0]]])  # [1, 2, 4]
    out = clip_boxes(boxes, height=10, width=12)
    assert torch.equal(out, torch.tensor([[[0.0, 0.0, 12.0, 8.0], [3.0, 4.0, 5.0, 10.0]]]))
    assert boxes[0, 0, 0] == -5.0  # input untouched


def test_converters() -> None:
    xyxy = torch.tensor([[1.0, 2.0, 5.0, 10.0]])
    assert torch.equal(xyxy_to_xywh(xyxy), torch.tensor([[1.0, 2.0, 4.0, 8.0]]))
    assert torch.equal(xyxy_to_cxcywh(xyxy), torch.tensor([[3.0, 6.0, 4.0, 8.0]]))
    assert torch.equal(xywh_to_xyxy(torch.tensor([[1.0, 2.0, 4.0, 8.0]])), xyxy)
    assert torch.equal(cxcywh_to_xyxy(torch.tensor([[3.0, 6.0, 4.0, 8.0]])), xyxy)
    rand = torch.rand(2, 7, 4) * 100
    rand[..., 2:] += rand[..., :2]
    assert torch.allclose(xywh_to_xyxy(xyxy_to_xywh(rand)), rand, atol=1e-4)
    assert torch.allclose(cxcywh_to_xyxy(xyxy_to_cxcywh(rand)), rand, atol=1e-4)
