"""Shared fixtures for the CLI tests: a tiny saved model and fake head outputs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from torch import Tensor

from efficientdet import create_model, save_model
from efficientdet.config import ModelConfig
from efficientdet.ops.anchors import anchors_for_config, feature_size
from efficientdet.ops.box_coder import encode
from efficientdet.ops.boxes import box_iou

HeadOutputs = tuple[list[Tensor], list[Tensor]]


def head_outputs(
    targets: Sequence[tuple[Tensor, Tensor]],
    config: ModelConfig,
    input_hw: tuple[int, int],
    duplicates: bool = False,
) -> HeadOutputs:
    """Per-level head outputs that decode to exactly ``targets`` (boxes [M, 4] in model-input
    pixels, labels [M]) per image: for each box, the best-overlapping free anchor gets logit 8
    and the box's codes; everything else logit -20. ``duplicates`` adds, per box, a second
    anchor with a copy shifted right by 15% of its width at logit 1 (an NMS test case)."""
    n, k, a = len(targets), config.num_classes, config.anchors.num_anchors
    anchors = anchors_for_config(config.anchors, input_hw)
    cls = torch.full((n, anchors.shape[0], k), -20.0)
    box = torch.zeros(n, anchors.shape[0], 4)
    for i, (boxes, labels) in enumerate(targets):
        used: set[int] = set()
        for b, lab in zip(boxes.float(), labels.tolist()):
            variants = [(b, 8.0)]
            if duplicates:
                shift = 0.15 * float(b[2] - b[0])
                variants.append((b + torch.tensor([shift, 0.0, shift, 0.0]), 1.0))
            for target, logit in variants:
                order = box_iou(target[None], anchors)[0].argsort(descending=True).tolist()
                j = next(j for j in order if j not in used)
                used.add(j)
                cls[i, j, lab] = logit
                box[i, j] = encode(target[None], anchors[j : j + 1])[0]
    cls_levels, box_levels, start = [], [], 0
    for level in range(config.anchors.min_level, config.anchors.max_level + 1):
        fh, fw = feature_size(input_hw[0], level), feature_size(input_hw[1], level)
        count = fh * fw * a
        # Inverse of postprocess.flatten_outputs: [N, H*W*A, C] -> [N, A*C, H, W].
        cls_levels.append(cls[:, start : start + count].reshape(n, fh, fw, a * k).permute(0, 3, 1, 2))
        box_levels.append(box[:, start : start + count].reshape(n, fh, fw, a * 4).permute(0, 3, 1, 2))
        start += count
    return cls_levels, box_levels


def bright_region_forward(config: ModelConfig, label: int = 1) -> Callable[..., HeadOutputs]:
    """A fake ``EfficientDet.forward`` that "detects" the bright (near-white) region of each
    input as one object of class ``label``: its box is the bounding box of the pixels whose
    normalised mean is above 0.5 (white is 1 for Lite models, ~2.4 for D models; black is
    negative and padding 0)."""

    def forward(self: object, images: Tensor) -> HeadOutputs:
        bright = images.mean(1) > 0.5  # [N, H, W]
        targets = []
        for mask in bright:
            rows, cols = mask.any(1).nonzero().squeeze(1), mask.any(0).nonzero().squeeze(1)
            if rows.numel() == 0:
                targets.append((torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)))
                continue
            b = torch.tensor([[cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]], dtype=torch.float32)
            targets.append((b, torch.tensor([label])))
        return head_outputs(targets, config, (images.shape[-2], images.shape[-1]))

    return forward


@pytest.fixture(scope="session")
def fake_heads() -> Callable[..., HeadOutputs]:
    return head_outputs


@pytest.fixture(scope="session")
def bright_forward() -> Callable[..., Callable[..., HeadOutputs]]:
    return bright_region_forward


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved, untrained Lite0 with 3 classes named cat, dog, cup."""
    torch.manual_seed(0)
    model = create_model("efficientdet_lite0", num_classes=3, class_names=["cat", "dog", "cup"])
    path = tmp_path_factory.mktemp("weights") / "lite0.safetensors"
    save_model(model, path)
    return path
