"""The batched (GPU) hard-NMS post-processing gives the per-image path's detections exactly.

Run on the CPU here; tests/test_cuda.py checks the GPU dispatch."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import Tensor

import efficientdet.inference.postprocess as pp
from efficientdet.config import AnchorConfig, PostprocessConfig
from efficientdet.inference.postprocess import clip_limits, postprocess, postprocess_batched
from efficientdet.ops.anchors import anchors_for_config
from efficientdet.ops.outputs import flatten_outputs

ANCHORS = AnchorConfig(min_level=3, max_level=6)
IMAGE = (128, 160)  # (h, w): levels 16x20, 8x10, 4x5, 2x3
K = 4
SIZES = [(256, 320), (100, 160), (128, 128)]
SCALES = torch.tensor([0.5, 1.0, 1.0])


def _outputs(
    batch: int, seed: int, logit_scale: float = 2.0, logit_shift: float = -2.0
) -> tuple[list[Tensor], list[Tensor]]:
    g = torch.Generator().manual_seed(seed)
    cls, box = [], []
    for level in range(ANCHORS.min_level, ANCHORS.max_level + 1):
        h, w = -(-IMAGE[0] // 2**level), -(-IMAGE[1] // 2**level)
        cls.append(torch.randn(batch, 9 * K, h, w, generator=g) * logit_scale + logit_shift)
        box.append(torch.randn(batch, 36, h, w, generator=g) * 0.3)
    return cls, box


def _batched(cls: list[Tensor], box: list[Tensor], cfg: PostprocessConfig, scales: Tensor | None, sizes) -> list:
    anchors = anchors_for_config(ANCHORS, IMAGE)
    upper = clip_limits(anchors, scales, sizes)
    flat_cls, flat_box = flatten_outputs(cls, box, K)
    return postprocess_batched(flat_cls, flat_box, anchors, cfg, scales, sizes, upper)


def _assert_same(got: list[dict[str, Tensor]], want: list[dict[str, Tensor]]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g["labels"].dtype == w["labels"].dtype == torch.int64
        assert torch.equal(g["scores"], w["scores"])
        assert torch.equal(g["labels"], w["labels"])
        assert torch.equal(g["boxes"], w["boxes"])


@pytest.mark.parametrize(
    "threshold, max_candidates, max_detections, with_sizes",
    [(0.001, 5000, 100, True), (0.5, 1000, 100, True), (0.001, 300, 20, False), (0.2, 5000, 7, True)],
)
def test_same_detections_as_the_per_image_path(threshold, max_candidates, max_detections, with_sizes) -> None:
    cfg = PostprocessConfig(
        score_threshold=threshold, max_candidates=max_candidates, max_detections=max_detections, nms="hard"
    )
    cls, box = _outputs(3, seed=max_detections)
    scales, sizes = (SCALES, SIZES) if with_sizes else (None, None)
    want = postprocess(cls, box, anchors_for_config(ANCHORS, IMAGE), cfg, K, scales=scales, image_sizes=sizes)
    assert sum(len(w["scores"]) for w in want) >= 3 * min(max_detections, 10)
    _assert_same(_batched(cls, box, cfg, scales, sizes), want)


def test_crowded_image_takes_the_per_image_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tight cluster of confident boxes: NMS over the first 4 * max_detections keeps too few,
    so that image needs more candidates (the per-image rule); the other images do not."""
    cls, box = _outputs(2, seed=5, logit_scale=1.0, logit_shift=-12.0)  # nothing passes 0.001 ...
    # ... except image 1's cluster of class 0 on level 3 (channels a * K): 1080 overlapping candidates
    cls[0][1, ::K, 2:12, 2:14] = 5.0 + torch.rand(9, 10, 12, generator=torch.Generator().manual_seed(0))
    for b in box:
        b.zero_()
    cfg = PostprocessConfig(score_threshold=0.001, max_candidates=5000, max_detections=100, nms="hard")
    want = postprocess(cls, box, anchors_for_config(ANCHORS, IMAGE), cfg, K, scales=SCALES[:2], image_sizes=SIZES[:2])
    assert len(want[0]["scores"]) == 0 and len(want[1]["scores"]) > 0

    calls: list[int] = []
    original = pp.hard_nms_top

    def counting(boxes: Tensor, *args):
        calls.append(len(boxes))
        return original(boxes, *args)

    monkeypatch.setattr(pp, "hard_nms_top", counting)
    _assert_same(_batched(cls, box, cfg, SCALES[:2], SIZES[:2]), want)
    assert calls == [9 * 10 * 12]  # image 1 only, with all its candidates


def test_nothing_above_the_threshold() -> None:
    cls, box = _outputs(2, seed=1, logit_scale=0.1, logit_shift=-20.0)
    cfg = dataclasses.replace(PostprocessConfig(), nms="hard")
    got = _batched(cls, box, cfg, SCALES[:2], SIZES[:2])
    assert [len(g["scores"]) for g in got] == [0, 0]
    assert all(g["boxes"].shape == (0, 4) for g in got)
