import time
import warnings

import pytest
import torch

from efficientdet.config import AnchorConfig
from efficientdet.ops.anchors import anchors_for_config
from efficientdet.ops.box_coder import encode
from efficientdet.ops.boxes import box_iou
from efficientdet.ops.matcher import BACKGROUND, IGNORE, AnchorLabeler, assign_anchors, batched_anchor_iou

RATIOS = [(1.0, 1.0), (1.4, 0.7), (0.7, 1.4)]


# The effdet comparisons run at 256 px (T = 12276) to keep them fast; the timing uses D0's 512.
SIZE = 256


@pytest.fixture(scope="module")
def d0_anchors() -> torch.Tensor:
    return anchors_for_config(AnchorConfig(), (SIZE, SIZE))


@pytest.fixture(scope="module")
def effdet_labeler():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from effdet.anchors import AnchorLabeler as EffdetLabeler
        from effdet.anchors import Anchors

        anchors = Anchors(3, 7, 3, RATIOS, 4.0, (SIZE, SIZE))
        return EffdetLabeler(anchors, num_classes=90, match_threshold=0.5)


def _yxyx(b: torch.Tensor) -> torch.Tensor:
    return b[:, [1, 0, 3, 2]]


def _effdet_targets(labeler, boxes: list[torch.Tensor], labels: list[torch.Tensor]):
    """effdet's per-level targets flattened to ours: labels +1 in (effdet's are 1-based), yxyx boxes."""
    cls, box, num = labeler.batch_label_anchors([_yxyx(b) for b in boxes], [lab + 1 for lab in labels])
    n = len(boxes)
    return torch.cat([c.reshape(n, -1) for c in cls], 1), torch.cat([b.reshape(n, -1, 4) for b in box], 1), num


def _random_boxes(gen: torch.Generator, m: int, lo: float, hi: float, size: int = SIZE) -> torch.Tensor:
    wh = lo + (hi - lo) * torch.rand(m, 2, generator=gen)
    xy = torch.rand(m, 2, generator=gen) * (size - wh)
    return torch.cat([xy, xy + wh], 1)


def test_effdet_anchors_are_ours(d0_anchors: torch.Tensor, effdet_labeler) -> None:
    assert torch.equal(_yxyx(effdet_labeler.anchors.boxes), d0_anchors)


def test_iou_matches_pairwise(d0_anchors: torch.Tensor) -> None:
    gen = torch.Generator().manual_seed(1)
    gt = torch.stack([_random_boxes(gen, 5, 4, 300) for _ in range(2)])
    iou = batched_anchor_iou(d0_anchors, gt)
    for i in range(2):
        assert torch.allclose(iou[i], box_iou(gt[i], d0_anchors), atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_equals_effdet_random(d0_anchors: torch.Tensor, effdet_labeler, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    counts = [10, 0, 3, 25]  # ragged batch, one image without objects
    boxes = [_random_boxes(gen, m, 8, 200) for m in counts]
    labels = [torch.randint(0, 90, (m,), generator=gen) for m in counts]
    cls, box, num = AnchorLabeler(d0_anchors)(boxes, labels)
    ref_cls, ref_box, ref_num = _effdet_targets(effdet_labeler, boxes, labels)
    assert cls.dtype == torch.int64 and cls.shape == (4, d0_anchors.shape[0])
    assert torch.equal(cls, ref_cls)
    assert torch.allclose(box, ref_box, atol=1e-5)
    assert torch.equal(num, ref_num.long())
    assert num[1] == 0 and (cls[1] == BACKGROUND).all()


def test_force_match_equals_effdet(d0_anchors: torch.Tensor, effdet_labeler) -> None:
    # Tiny boxes (max IoU < 0.5 with every anchor, smallest anchor is 32 px) exist only through
    # force matching; duplicated boxes make several GTs share a best anchor (lowest index wins)
    # and tie for every anchor they overlap.
    gen = torch.Generator().manual_seed(3)
    tiny = _random_boxes(gen, 6, 2, 10)
    tiny_iou = box_iou(tiny, d0_anchors).amax(1)
    assert (tiny_iou < 0.5).all() and (tiny_iou > 0).all()
    big = _random_boxes(gen, 3, 40, 150)
    boxes = [torch.cat([tiny, tiny[:2], big, big[:1]]), tiny[3:]]
    labels = [torch.arange(12) * 7 % 90, torch.tensor([5, 6, 7])]
    cls, box, num = AnchorLabeler(d0_anchors)(boxes, labels)
    ref_cls, ref_box, ref_num = _effdet_targets(effdet_labeler, boxes, labels)
    assert torch.equal(cls, ref_cls)
    assert torch.allclose(box, ref_box, atol=1e-5)
    assert torch.equal(num, ref_num.long())
    # Every tiny GT owns exactly its best anchor; a duplicate (index 6, 7) loses to index 0, 1.
    best = box_iou(tiny, d0_anchors).argmax(1)
    assert torch.equal(cls[0, best], labels[0][:6])
    assert not (cls[0] == labels[0][6]).any() and not (cls[0] == labels[0][7]).any()
    # The duplicate of a big box (index 11) loses every tie to the original (index 8).
    assert (cls[0] == labels[0][8]).any() and not (cls[0] == labels[0][11]).any()


def test_force_match_off(d0_anchors: torch.Tensor) -> None:
    tiny = torch.tensor([[100.0, 100.0, 104.0, 104.0]])
    cls, _, num = assign_anchors(d0_anchors, tiny, torch.tensor([3]), force_match=False)
    assert num == 0 and (cls == BACKGROUND).all()
    cls, _, num = assign_anchors(d0_anchors, tiny, torch.tensor([3]))
    assert num == 1 and (cls == 3).sum() == 1


def test_by_hand_thresholds_and_targets() -> None:
    # Anchors [0,0,10,10], [0,0,10,20], [0,0,10,40], [50,50,60,60]; GT [0,0,10,10] label 4.
    anchors = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 20], [0, 0, 10, 40], [50, 50, 60, 60]], dtype=torch.float32)
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    # IoUs 1, 0.5, 0.25, 0: thresholds 0.6/0.4 -> positive, ignored, negative, negative.
    cls, box, num = assign_anchors(anchors, gt, torch.tensor([4]), 0.6, 0.4)
    assert cls.tolist() == [4, IGNORE, BACKGROUND, BACKGROUND]
    assert num == 1
    assert torch.allclose(box[0], torch.zeros(4), atol=1e-6)
    assert (box[1:] == 0).all()
    # Default 0.5/0.5: IoU exactly 0.5 is positive (>=), with the encoded box.
    cls, box, num = assign_anchors(anchors, gt, torch.tensor([4]))
    assert cls.tolist() == [4, 4, BACKGROUND, BACKGROUND] and num == 2
    assert torch.allclose(box[1], encode(gt, anchors[1:2])[0])


def test_empty_and_degenerate(d0_anchors: torch.Tensor) -> None:
    cls, box, num = assign_anchors(d0_anchors, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))
    assert num == 0 and (cls == BACKGROUND).all() and (box == 0).all()
    # A zero-area GT touches no anchor: not force-matched (official would force it onto anchor 0).
    flat = torch.tensor([[10.0, 10.0, 10.0, 50.0]])
    cls, box, num = assign_anchors(d0_anchors, flat, torch.tensor([1]))
    assert num == 0 and (cls == BACKGROUND).all() and torch.isfinite(box).all()


def test_padded_tensor_input(d0_anchors: torch.Tensor) -> None:
    gen = torch.Generator().manual_seed(5)
    boxes = [_random_boxes(gen, 4, 20, 150), _random_boxes(gen, 2, 20, 150)]
    labels = [torch.tensor([1, 2, 3, 4]), torch.tensor([5, 6])]
    padded_boxes = torch.zeros(2, 4, 4)
    padded_boxes[0], padded_boxes[1, :2] = boxes[0], boxes[1]
    padded_boxes[1, 2:] = boxes[0][:2]  # real-looking boxes behind label -1 must be ignored
    padded_labels = torch.tensor([[1, 2, 3, 4], [5, 6, -1, -1]])
    labeler = AnchorLabeler(d0_anchors)
    for a, b in zip(labeler(boxes, labels), labeler(padded_boxes, padded_labels)):
        assert torch.equal(a, b)


def test_invalid_arguments(d0_anchors: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"^unmatched_threshold \(0\.5\) must not exceed match_threshold \(0\.4\)$"):
        AnchorLabeler(d0_anchors, match_threshold=0.4, unmatched_threshold=0.5)
    with pytest.raises(ValueError, match=r"^match_threshold must be in \(0, 1\], got 0\.0$"):
        AnchorLabeler(d0_anchors, match_threshold=0.0, unmatched_threshold=0.0)
    with pytest.raises(ValueError, match=r"^image #0: need boxes \[M, 4\] and labels \[M\], got \(2, 4\), \(3,\)$"):
        AnchorLabeler(d0_anchors)([torch.zeros(2, 4)], [torch.zeros(3, dtype=torch.int64)])


def test_speed_d0_batch8() -> None:
    anchors = anchors_for_config(AnchorConfig(), (512, 512))
    gen = torch.Generator().manual_seed(7)
    boxes = [_random_boxes(gen, 10, 8, 400, size=512) for _ in range(8)]
    labels = [torch.randint(0, 90, (10,), generator=gen) for _ in range(8)]
    labeler = AnchorLabeler(anchors)
    labeler(boxes, labels)  # warm-up
    times = []
    for _ in range(3):
        start = time.perf_counter()
        cls, _, _ = labeler(boxes, labels)
        times.append(time.perf_counter() - start)
    assert cls.shape == (8, 49104)
    print(
        f"\nAnchorLabeler D0 (T={anchors.shape[0]}), batch 8, 10 GT each, {torch.get_num_threads()} threads: "
        f"best of 3 {min(times) * 1e3:.1f} ms"
    )


def test_dense_and_sparse_box_targets_agree(d0_anchors: torch.Tensor) -> None:
    # The CPU path encodes only positives, the accelerator path all anchors; same result.
    from efficientdet.ops.matcher import _match, _targets_from_matches

    gen = torch.Generator().manual_seed(11)
    boxes = torch.stack([_random_boxes(gen, 6, 10, 200) for _ in range(3)])
    labels = torch.randint(0, 90, (3, 6), generator=gen)
    valid = torch.ones(3, 6, dtype=torch.bool)
    matches = _match(batched_anchor_iou(d0_anchors, boxes), valid, 0.5, 0.5, True)
    sparse = _targets_from_matches(matches, d0_anchors, boxes, labels, dense=False)
    dense = _targets_from_matches(matches, d0_anchors, boxes, labels, dense=True)
    assert torch.equal(sparse[0], dense[0]) and torch.equal(sparse[2], dense[2])
    assert torch.allclose(sparse[1], dense[1], atol=1e-6)
