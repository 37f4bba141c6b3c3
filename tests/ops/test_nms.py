import math

import pytest
import torch
from torch import Tensor

from efficientdet.ops.boxes import box_iou
from efficientdet.ops.nms import batched_nms, soft_nms


def _random_boxes(n: int, seed: int, size: float = 60.0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 100
    wh = torch.rand(n, 2, generator=g) * size + 5
    return torch.cat([xy, xy + wh], 1), torch.rand(n, generator=g)


def _sequential_soft_nms(
    boxes: Tensor, scores: Tensor, labels: Tensor, sigma: float, threshold: float, max_det: int
) -> tuple[Tensor, Tensor]:
    """Textbook Gaussian soft-NMS, one box at a time, one class at a time."""
    out_idx, out_scores = [], []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().squeeze(1)
        s = scores[idx].clone()
        alive = s >= threshold
        while alive.any():
            j = int(torch.where(alive, s, torch.tensor(-1.0)).argmax())
            out_idx.append(int(idx[j]))
            out_scores.append(float(s[j]))
            alive[j] = False
            iou = box_iou(boxes[idx[j]][None], boxes[idx])[0]
            s = s * torch.exp(-(iou * iou) / sigma)
            alive &= s >= threshold
    order = sorted(range(len(out_idx)), key=lambda i: -out_scores[i])[:max_det]
    return torch.tensor([out_idx[i] for i in order], dtype=torch.int64), torch.tensor(
        [out_scores[i] for i in order]
    )


def test_hard_nms_edge_cases() -> None:
    empty = batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5)
    assert empty.numel() == 0
    one = batched_nms(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([0.3]), torch.tensor([2]), 0.5)
    assert one.tolist() == [0]
    same = torch.tensor([[0.0, 0.0, 10.0, 10.0]]).repeat(4, 1)
    keep = batched_nms(same, torch.tensor([0.2, 0.9, 0.5, 0.1]), torch.zeros(4, dtype=torch.int64), 0.5)
    assert keep.tolist() == [1]
    # Different labels never suppress each other.
    keep = batched_nms(same, torch.tensor([0.2, 0.9, 0.5, 0.1]), torch.tensor([0, 0, 1, 1]), 0.5)
    assert keep.tolist() == [1, 2]


def test_soft_nms_edge_cases() -> None:
    keep, scores = soft_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    assert keep.shape == (0,) and scores.shape == (0,) and keep.dtype == torch.int64
    keep, scores = soft_nms(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([0.3]), torch.tensor([5]))
    assert keep.tolist() == [0] and torch.allclose(scores, torch.tensor([0.3]))
    # Below the threshold from the start: nothing.
    keep, _ = soft_nms(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([0.0001]), torch.tensor([0]))
    assert keep.numel() == 0
    with pytest.raises(ValueError, match=r"^soft-NMS sigma must be positive, got 0\.0$"):
        soft_nms(torch.zeros(1, 4), torch.ones(1), torch.zeros(1, dtype=torch.int64), sigma=0.0)


def test_soft_nms_identical_boxes_decay() -> None:
    same = torch.tensor([[0.0, 0.0, 10.0, 10.0]]).repeat(3, 1)
    scores = torch.tensor([0.9, 0.8, 0.7])
    keep, new = soft_nms(same, scores, torch.zeros(3, dtype=torch.int64), sigma=0.5, score_threshold=0.0)
    d = math.exp(-1 / 0.5)  # IoU 1 -> factor exp(-1/sigma) per selected box
    # 0.8 decays once by the 0.9 box; 0.7 decays by both selected boxes before it.
    assert keep.tolist() == [0, 1, 2]
    assert torch.allclose(new, torch.tensor([0.9, 0.8 * d, 0.7 * d * d]))


def test_soft_vs_hard_differ_and_are_valid() -> None:
    # IoU(A, B) = 90 / 110 > 0.5: hard NMS drops B, soft-NMS keeps it with a decayed score.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    scores = torch.tensor([0.9, 0.8, 0.5])
    labels = torch.zeros(3, dtype=torch.int64)
    hard = batched_nms(boxes, scores, labels, 0.5)
    keep, new = soft_nms(boxes, scores, labels, sigma=0.5)
    assert hard.tolist() == [0, 2]
    assert keep.tolist() == [0, 2, 1]
    iou = 90 / 110
    assert torch.allclose(new, torch.tensor([0.9, 0.5, 0.8 * math.exp(-iou * iou / 0.5)]))
    assert set(hard.tolist()) <= set(keep.tolist())
    assert (new <= scores[keep] + 1e-7).all() and (new[:-1] >= new[1:]).all()


@pytest.mark.parametrize(
    "n,num_classes,max_det,threshold,seed",
    [(200, 4, 100, 0.001, 0), (300, 3, 10, 0.001, 1), (150, 1, 1000, 0.05, 2), (400, 7, 50, 0.2, 3)],
)
def test_soft_nms_matches_sequential(n: int, num_classes: int, max_det: int, threshold: float, seed: int) -> None:
    boxes, scores = _random_boxes(n, seed)
    labels = torch.randint(0, num_classes, (n,), generator=torch.Generator().manual_seed(seed + 10)) * 3
    keep, new = soft_nms(boxes, scores, labels, sigma=0.5, score_threshold=threshold, max_detections=max_det)
    ref_keep, ref_new = _sequential_soft_nms(boxes, scores, labels, 0.5, threshold, max_det)
    assert keep.tolist() == ref_keep.tolist()
    assert torch.allclose(new, ref_new, atol=1e-6)
    assert len(keep) <= max_det and (new >= threshold).all()


def test_soft_nms_classes_do_not_interact() -> None:
    same = torch.tensor([[0.0, 0.0, 10.0, 10.0]]).repeat(2, 1)
    keep, new = soft_nms(same, torch.tensor([0.9, 0.8]), torch.tensor([0, 1]))
    assert keep.tolist() == [0, 1] and torch.allclose(new, torch.tensor([0.9, 0.8]))


def test_soft_nms_matches_effdet() -> None:
    pytest.importorskip("effdet")
    from effdet.soft_nms import batched_soft_nms

    boxes, scores = _random_boxes(300, 5)
    labels = torch.randint(0, 4, (300,), generator=torch.Generator().manual_seed(6))
    keep, new = soft_nms(boxes, scores, labels, sigma=0.5, score_threshold=0.001, max_detections=100)
    ref_keep, ref_new = batched_soft_nms(boxes, scores, labels, method_gaussian=True, sigma=0.5, score_threshold=0.001)
    assert keep.tolist() == ref_keep[:100].tolist()
    assert torch.allclose(new, ref_new[:100], atol=1e-5)
