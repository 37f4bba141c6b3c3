import dataclasses

import pytest
import torch
from torch import Tensor

from efficientdet.config import AnchorConfig, PostprocessConfig
from efficientdet.inference.postprocess import postprocess
from efficientdet.ops.anchors import anchors_for_config, generate_anchors
from efficientdet.ops.outputs import flatten_outputs

TINY = AnchorConfig(min_level=3, max_level=5)
IMAGE = (64, 96)  # (h, w): level sizes 8x12, 4x6, 2x3
K = 3


def _random_outputs(batch: int, seed: int) -> tuple[list[Tensor], list[Tensor]]:
    g = torch.Generator().manual_seed(seed)
    a = TINY.num_anchors
    cls, box = [], []
    for level in range(TINY.min_level, TINY.max_level + 1):
        h, w = IMAGE[0] >> level, IMAGE[1] >> level
        cls.append(torch.randn(batch, a * K, h, w, generator=g) * 2)
        box.append(torch.randn(batch, a * 4, h, w, generator=g) * 0.5)
    return cls, box


def test_flatten_outputs_channel_order() -> None:
    cls, box = _random_outputs(2, 0)
    flat_cls, flat_box = flatten_outputs(cls, box, K)
    a = TINY.num_anchors
    assert flat_cls.shape == (2, anchors_for_config(TINY, IMAGE).shape[0], K)
    assert flat_box.shape == (2, flat_cls.shape[1], 4)
    # Level 3 (8x12): row ((y * W + x) * A + anchor), channel anchor * K + class.
    n, y, x, anchor, k = 1, 5, 7, 4, 2
    row = (y * 12 + x) * a + anchor
    assert flat_cls[n, row, k] == cls[0][n, anchor * K + k, y, x]
    assert torch.equal(flat_box[n, row], box[0][n, anchor * 4 : anchor * 4 + 4, y, x])
    # First row of level 4 follows all of level 3.
    assert flat_cls[0, 8 * 12 * a, 1] == cls[1][0, 1, 0, 0]
    with pytest.raises(ValueError, match=r"^need the same non-zero number of class and box levels, got 3 and 2$"):
        flatten_outputs(cls, box[:2], K)


def test_single_detection_by_hand() -> None:
    # 16x16, one level-3 anchor per location: anchors as in the anchor test.
    anchors = generate_anchors((16, 16), 3, 3, 1, [(1.0, 1.0)], 1.0)
    cls = torch.full((1, K, 2, 2), -20.0)
    cls[0, 2, 1, 0] = 5.0  # class 2 at y=1, x=0 -> anchor 2 = [0, 8, 8, 16]
    box = torch.zeros(1, 4, 2, 2)
    config = PostprocessConfig(score_threshold=0.5)
    (out,) = postprocess([cls], [box], anchors, config, K)
    assert torch.equal(out["boxes"], torch.tensor([[0.0, 8.0, 8.0, 16.0]]))
    assert torch.allclose(out["scores"], torch.sigmoid(torch.tensor([5.0])))
    assert out["labels"].tolist() == [2] and out["labels"].dtype == torch.int64
    # Model input was the original scaled by 2: divide; then clip to the original (h=6, w=3).
    (scaled,) = postprocess([cls], [box], anchors, config, K, scales=torch.tensor([2.0]))
    assert torch.equal(scaled["boxes"], torch.tensor([[0.0, 4.0, 4.0, 8.0]]))
    (clipped,) = postprocess([cls], [box], anchors, config, K, torch.tensor([2.0]), [(6, 3)])
    assert torch.equal(clipped["boxes"], torch.tensor([[0.0, 4.0, 3.0, 6.0]]))


def test_empty_after_threshold_and_shapes() -> None:
    cls, box = _random_outputs(2, 1)
    cls = [c.fill_(-30.0) for c in cls]
    for nms in ("hard", "soft"):
        out = postprocess(cls, box, anchors_for_config(TINY, IMAGE), PostprocessConfig(nms=nms), K)
        assert len(out) == 2
        assert out[0]["boxes"].shape == (0, 4) and out[0]["scores"].shape == (0,)


def test_batch_equals_single_images() -> None:
    cls, box = _random_outputs(2, 2)
    anchors = anchors_for_config(TINY, IMAGE)
    config = PostprocessConfig(max_candidates=300)
    scales = torch.tensor([0.5, 2.0])
    sizes = [(128, 192), (32, 40)]
    both = postprocess(cls, box, anchors, config, K, scales, sizes)
    for i in range(2):
        (single,) = postprocess(
            [c[i : i + 1] for c in cls], [b[i : i + 1] for b in box], anchors, config, K, scales[i : i + 1], sizes[i : i + 1]
        )
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(both[i][key], single[key])
        assert (both[i]["boxes"][:, 2] <= sizes[i][1]).all() and (both[i]["boxes"][:, 3] <= sizes[i][0]).all()


def test_soft_nms_mode() -> None:
    cls, box = _random_outputs(1, 3)
    anchors = anchors_for_config(TINY, IMAGE)
    hard = postprocess(cls, box, anchors, PostprocessConfig(max_candidates=400), K)[0]
    soft = postprocess(cls, box, anchors, PostprocessConfig(max_candidates=400, nms="soft"), K)[0]
    for out in (hard, soft):
        assert len(out["scores"]) == 100
        assert (out["scores"][:-1] >= out["scores"][1:]).all()
        assert ((out["labels"] >= 0) & (out["labels"] < K)).all()
    assert not torch.equal(hard["scores"], soft["scores"])
    with pytest.raises(ValueError, match=r"^unknown nms mode 'bogus'; expected 'hard' or 'soft'$"):
        postprocess(cls, box, anchors, dataclasses.replace(PostprocessConfig(), nms="bogus"), K)  # type: ignore[arg-type]


@pytest.mark.parametrize("with_scale,with_clip", [(False, False), (True, False), (True, True), (False, True)])
def test_matches_effdet(with_scale: bool, with_clip: bool) -> None:
    pytest.importorskip("effdet")
    from effdet.anchors import generate_detections
    from effdet.bench import _post_process

    batch, candidates = 2, 500
    cls, box = _random_outputs(batch, 4)
    anchors = anchors_for_config(TINY, IMAGE)
    config = PostprocessConfig(max_candidates=candidates, score_threshold=0.0)
    scales = torch.tensor([0.5, 1.25]) if with_scale else None
    # original (h, w) per image: smaller than the model input so that clipping matters
    sizes = [(40, 56), (30, 20)] if with_clip else None
    ours = postprocess(cls, box, anchors, config, K, scales=scales, image_sizes=sizes)

    cls_top, box_top, indices, classes = _post_process(cls, box, len(cls), K, max_detection_points=candidates)
    anchors_yxyx = anchors[:, [1, 0, 3, 2]]
    for i in range(batch):
        # effdet's img_scale is original / model (the inverse of ours) and it multiplies.
        img_scale = None if scales is None else 1.0 / scales[i]
        # effdet's img_size is (width, height) and it clips before NMS, as we do.
        img_size = None if sizes is None else torch.tensor([sizes[i][1], sizes[i][0]], dtype=torch.float32)
        if img_size is not None and img_scale is None:
            img_scale = torch.tensor(1.0)
        det = generate_detections(cls_top[i], box_top[i], anchors_yxyx, indices[i], classes[i], img_scale, img_size)
        det = det[det[:, 4] > 0]  # drop zero padding
        assert len(ours[i]["scores"]) == len(det) == 100
        assert torch.allclose(ours[i]["boxes"], det[:, :4], atol=1e-4)
        assert torch.allclose(ours[i]["scores"], det[:, 4], atol=1e-6)
        assert torch.equal(ours[i]["labels"] + 1, det[:, 5].long())  # effdet labels are 1-based


@pytest.mark.parametrize("num_classes", [1, 2, 5, 16, 17, 90])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "flat"])
def test_per_anchor_maxima_equal_torch_for_every_layout(num_classes: int, layout: str) -> None:
    """LevelOutputs.amax picks numpy or torch by layout and class count: same maxima either way."""
    from efficientdet.inference.candidates import LevelOutputs

    gen = torch.Generator().manual_seed(num_classes)
    if layout == "flat":  # ONNX outputs [N, T, K], read as one level of A = 1 (as OnnxDetector does)
        flat = torch.randn(2, 300, num_classes, generator=gen)
        maps = [flat.transpose(1, 2).unsqueeze(-1)]
        expected = flat.amax(-1)
    else:
        maps = [torch.randn(2, 3 * num_classes, s, s + 1, generator=gen) for s in (6, 3)]
        if layout == "channels_last":
            maps = [m.contiguous(memory_format=torch.channels_last) for m in maps]
        expected = flatten_outputs(maps, [torch.zeros(2, 12, m.shape[2], m.shape[3]) for m in maps], num_classes)[0].amax(-1)
    assert torch.equal(LevelOutputs(maps, num_classes).amax(), expected)


@pytest.mark.parametrize("threshold", [0.001, 0.3, 0.9])
@pytest.mark.parametrize("num_classes", [1, 3])
def test_candidates_equal_a_full_top_k_at_any_threshold(threshold: float, num_classes: int) -> None:
    """top_candidates (with its shortcut when few anchors pass) = threshold + top-k of all T*K logits."""
    import math

    from efficientdet.inference.candidates import LevelOutputs, logit_floor, top_candidates

    gen = torch.Generator().manual_seed(7)
    flat = torch.randn(1, 4000, num_classes, generator=gen) * 2 - 3
    cls = LevelOutputs([flat.transpose(1, 2).unsqueeze(-1)], num_classes)
    for k in (5, 300):
        values, anchors, labels = top_candidates(cls, cls.amax()[0], 0, k, logit_floor(threshold))
        everything = flat[0].flatten()
        keep = everything[everything >= math.log(threshold / (1 - threshold))]
        expected = keep.topk(min(k, keep.numel())).values
        assert torch.equal(values, expected)
        assert torch.equal(flat[0, anchors, labels], values)


def test_candidate_bound_is_tight_for_pre_selected_rows() -> None:
    """A candidates graph hands over exactly k rows (k = max_candidates), all usually above a low
    threshold: the bound must be their smallest maximum, not the threshold, or every logit of
    every row is ranked (COCO's 90 classes at 0.001: 335k values instead of ~7k, 6 ms)."""
    import math

    from efficientdet.inference.candidates import candidate_bound, logit_floor, top_of_rows

    best = torch.tensor([3.0, 1.0, 2.0, 5.0])
    assert candidate_bound(best, 4, -5.0) == 1.0  # k rows: the smallest maximum
    assert candidate_bound(best, 4, 2.5) == 2.5  # the threshold when it is higher
    assert candidate_bound(best, 5, -5.0) == -5.0  # fewer rows than k: only the threshold bounds
    assert candidate_bound(best, 2, -5.0) == 3.0  # the k-th largest maximum
    assert candidate_bound(best, 2, 2.5) == 3.0  # exactly k pass the threshold: still the k-th
    assert candidate_bound(best, 3, 2.5) == 2.5  # fewer than k pass: the threshold

    gen = torch.Generator().manual_seed(3)
    rows = torch.randn(300, 90, generator=gen) + torch.rand(300, 1, generator=gen) * 4
    values, r, c = top_of_rows(rows, 300, logit_floor(0.001))
    expected = rows.flatten()[rows.flatten() >= math.log(0.001 / 0.999)].topk(300).values
    assert torch.equal(values, expected) and torch.equal(rows[r, c], values)
