"""Test-time augmentation: flip geometry, multi-scale sizes, NMS / weighted-box-fusion merges."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from efficientdet import Detector, create_model
from efficientdet.inference.tta import TTADetector, weighted_box_fusion
from efficientdet.ops.anchors import anchors_for_config, feature_size
from efficientdet.ops.box_coder import encode
from efficientdet.ops.boxes import box_iou


@pytest.fixture(scope="module")
def detector() -> Detector:
    torch.manual_seed(0)
    return Detector(create_model("efficientdet_lite0", num_classes=3, class_names=["cat", "dog", "cup"]))


def _bright_forward(config, left_half_only: bool = False):
    """Fake forward: the bounding box of each input's white pixels, class 1, logit 6 (0.9975),
    encoded on the best-overlapping anchor. ``left_half_only``: blind in the right half."""

    def forward(images: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        n, _, h, w = images.shape
        anchors = anchors_for_config(config.anchors, (h, w))
        k, a = config.num_classes, config.anchors.num_anchors
        cls, box = torch.full((n, len(anchors), k), -20.0), torch.zeros(n, len(anchors), 4)
        for i, mask in enumerate(images.mean(1) > 0.5):
            if left_half_only:
                mask[:, w // 2 :] = False
            rows, cols = mask.any(1).nonzero().squeeze(1), mask.any(0).nonzero().squeeze(1)
            if rows.numel():
                b = torch.tensor([[cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]], dtype=torch.float32)
                j = int(box_iou(b, anchors).argmax())
                cls[i, j, 1], box[i, j] = 6.0, encode(b, anchors[j : j + 1])[0]
        cls_l, box_l, start = [], [], 0
        for level in range(config.anchors.min_level, config.anchors.max_level + 1):
            fh, fw = feature_size(h, level), feature_size(w, level)
            c = fh * fw * a
            cls_l.append(cls[:, start : start + c].reshape(n, fh, fw, a * k).permute(0, 3, 1, 2))
            box_l.append(box[:, start : start + c].reshape(n, fh, fw, a * 4).permute(0, 3, 1, 2))
            start += c
        return cls_l, box_l

    return forward


def _image(h: int, w: int, box: tuple[int, int, int, int]) -> np.ndarray:
    a = np.zeros((h, w, 3), np.uint8)
    a[box[1] : box[3], box[0] : box[2]] = 255
    return a


def test_wbf_hand_computed() -> None:
    boxes = torch.tensor([
        [0.0, 0.0, 10.0, 10.0],    # A, class 0, 0.9
        [1.0, 1.0, 11.0, 11.0],    # B, class 0, 0.6: IoU(A, B) = 81 / 119 = 0.68 -> fused with A
        [50.0, 50.0, 60.0, 60.0],  # C, class 0, 0.8: alone
        [0.0, 0.0, 10.0, 10.0],    # D, class 1, 0.7: same place as A, other class -> alone
    ])  # fmt: skip
    scores = torch.tensor([0.9, 0.6, 0.8, 0.7])
    labels = torch.tensor([0, 0, 0, 1])
    fused, fused_scores, fused_labels = weighted_box_fusion(boxes, scores, labels, iou_threshold=0.55, num_views=2)
    # A+B: box (0.9 A + 0.6 B) / 1.5 = A + 0.4; score mean(0.9, 0.6) * min(2, 2) / 2 = 0.75.
    # C: 0.8 * 1 / 2 = 0.4 (one view of two found it); D: 0.7 / 2 = 0.35.
    torch.testing.assert_close(fused, torch.tensor([[0.4, 0.4, 10.4, 10.4], [50, 50, 60, 60], [0, 0, 10, 10.0]]))
    torch.testing.assert_close(fused_scores, torch.tensor([0.75, 0.4, 0.35]))
    assert fused_labels.tolist() == [0, 0, 1]


def test_wbf_joins_the_best_overlapping_leader_and_handles_empty() -> None:
    boxes = torch.tensor([[0.0, 0, 10, 10], [7.0, 0, 17, 10], [4.0, 0, 14, 10]])
    # Leaders: boxes 0 and 1 (IoU 3/17); box 2 overlaps both above 0.3, box 1 more (7/13 vs 6/14).
    fused, scores, _ = weighted_box_fusion(boxes, torch.tensor([0.9, 0.8, 0.4]), torch.zeros(3, dtype=torch.long), 0.3)
    torch.testing.assert_close(fused[1], (0.8 * boxes[1] + 0.4 * boxes[2]) / 1.2)
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.6]))  # num_views=1: plain means
    b, s, lab = weighted_box_fusion(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))
    assert b.shape == (0, 4) and s.shape == (0,) and lab.shape == (0,)


@pytest.mark.parametrize("merge", ["nms", "wbf"])
def test_flip_of_a_symmetric_fake_output_is_consistent(
    detector: Detector, monkeypatch: pytest.MonkeyPatch, merge: str
) -> None:
    """The fake 'network' finds the white square wherever it is, so the mirrored view, mapped
    back, must give the very same box and the merge must keep it once, at full score."""
    monkeypatch.setattr(detector.model, "forward", _bright_forward(detector.config))
    images = [_image(240, 400, (40, 60, 120, 140)), _image(100, 100, (70, 10, 95, 30))]
    plain = detector(images, score_threshold=0.5)
    tta = TTADetector(detector, flips=True, merge=merge)(images, score_threshold=0.5)
    for p, t in zip(plain, tta):
        assert len(p["boxes"]) == len(t["boxes"]) == 1 and t["names"] == ["dog"]
        torch.testing.assert_close(t["boxes"], p["boxes"], atol=1e-3, rtol=0)
        torch.testing.assert_close(t["scores"], p["scores"])
    torch.testing.assert_close(plain[1]["boxes"][0], torch.tensor([70.0, 10, 95, 30]), atol=0.5, rtol=0)


def test_wbf_down_weights_boxes_only_some_views_find(detector: Detector, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(detector.model, "forward", _bright_forward(detector.config, left_half_only=True))
    image = _image(320, 320, (20, 20, 80, 80))  # mirrored, the square is in the blind half
    [plain] = detector([image], score_threshold=0.1)
    [fused] = TTADetector(detector, flips=True, merge="wbf")([image], score_threshold=0.1)
    torch.testing.assert_close(fused["boxes"], plain["boxes"])
    torch.testing.assert_close(fused["scores"], plain["scores"] / 2)


def test_multiscale_sizes_and_real_network(detector: Detector) -> None:
    sizes = TTADetector(detector, flips=True, scales=(0.75, 1.0, 1.25, 1.26, 1.0)).sizes
    assert sizes == [(256, 256), (320, 320), (384, 384), (416, 416)]  # multiples of 32, deduplicated
    tta = TTADetector(detector, flips=True, scales=(0.6, 1.0), merge="wbf")
    assert tta.sizes == [(192, 192), (320, 320)] and tta.num_views == 4
    images = [np.random.default_rng(0).integers(0, 255, (90, 130, 3), dtype=np.uint8)]
    [res] = tta(images, score_threshold=0.0)
    boxes = res["boxes"]
    assert len(boxes) == len(res["scores"]) == len(res["labels"]) > 0 and len(boxes) <= 100
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 130).all() and (boxes[:, 3] <= 90).all()
    assert (res["scores"][:-1] >= res["scores"][1:]).all()
    with pytest.raises(ValueError, match=r"^unknown merge 'vote'; expected 'nms' or 'wbf'$"):
        TTADetector(detector, merge="vote")  # type: ignore[arg-type]
