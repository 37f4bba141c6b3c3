"""Official EfficientDet post-processing: top-k, decode, class-wise NMS, top detections, rescale."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from efficientdet.config import PostprocessConfig
from efficientdet.ops.box_coder import decode
from efficientdet.ops.boxes import clip_boxes
from efficientdet.ops.nms import batched_nms, soft_nms

__all__ = ["flatten_outputs", "postprocess"]


def flatten_outputs(
    class_outputs: Sequence[Tensor], box_outputs: Sequence[Tensor], num_classes: int
) -> tuple[Tensor, Tensor]:
    """Per-level head outputs -> (cls [N, T, K], box [N, T, 4]) in anchor order.

    class_outputs[l]: [N, A*K, H_l, W_l]; box_outputs[l]: [N, A*4, H_l, W_l]. NHWC then reshape
    makes row index ((y * W + x) * A + a) and channel a*K + k -> class k, matching the anchors.
    """
    if len(class_outputs) != len(box_outputs) or not class_outputs:
        raise ValueError(
            f"need the same non-zero number of class and box levels, got {len(class_outputs)} and {len(box_outputs)}"
        )
    batch = class_outputs[0].shape[0]
    cls_levels, box_levels = [], []
    for level, (c, b) in enumerate(zip(class_outputs, box_outputs)):
        if c.shape[1] % num_classes or b.shape[1] % 4 or c.shape[1] // num_classes != b.shape[1] // 4:
            raise ValueError(
                f"level {level}: class channels {c.shape[1]} and box channels {b.shape[1]} do not "
                f"match A*{num_classes} and A*4 for one anchor count A"
            )
        cls_levels.append(c.permute(0, 2, 3, 1).reshape(batch, -1, num_classes))
        box_levels.append(b.permute(0, 2, 3, 1).reshape(batch, -1, 4))
    return torch.cat(cls_levels, 1), torch.cat(box_levels, 1)


def postprocess(
    class_outputs: Sequence[Tensor],
    box_outputs: Sequence[Tensor],
    anchors: Tensor,
    config: PostprocessConfig,
    num_classes: int,
    scales: Tensor | None = None,
    image_sizes: Sequence[tuple[int, int]] | None = None,
) -> list[dict[str, Tensor]]:
    """Head outputs -> one dict per image: ``boxes`` [M, 4] float xyxy, ``scores`` [M], ``labels`` [M] int64.

    class_outputs/box_outputs as in :func:`flatten_outputs`; anchors [T, 4] xyxy model-input pixels.
    ``scales`` [N]: model-input size / original size per image, so boxes are divided by it to get
    original pixels; ``image_sizes``: original (h, w) per image to clip to. Labels are 0-based.
    Steps: top ``max_candidates`` of the flattened [T*K] logits, sigmoid, decode, drop scores
    below ``score_threshold``, clip to the image, class-wise hard or soft NMS, top
    ``max_detections``, rescale to original pixels (and clip again, for rounding).
    """
    cls, box = flatten_outputs(class_outputs, box_outputs, num_classes)
    batch, num_anchors, _ = cls.shape
    if anchors.shape[0] != num_anchors:
        raise ValueError(f"head outputs give {num_anchors} anchors but {anchors.shape[0]} anchors were passed")
    if scales is not None:
        scales = torch.as_tensor(scales, dtype=torch.float32).reshape(-1)
    if scales is not None and scales.numel() != batch:
        raise ValueError(f"need one scale per image ({batch}), got {scales.numel()}")
    if image_sizes is not None and len(image_sizes) != batch:
        raise ValueError(f"need one image size per image ({batch}), got {len(image_sizes)}")

    # Batched: top-k over anchors x classes (sigmoid is monotonic, so logits rank the same).
    k = min(config.max_candidates, num_anchors * num_classes)
    logits, flat_idx = cls.reshape(batch, -1).topk(k, dim=1)  # [N, k]
    anchor_idx = torch.div(flat_idx, num_classes, rounding_mode="floor")
    labels_all = flat_idx % num_classes
    codes = box.gather(1, anchor_idx.unsqueeze(-1).expand(-1, -1, 4))  # [N, k, 4]
    boxes_all = decode(codes.float(), anchors.to(codes.device, torch.float32)[anchor_idx])  # [N, k, 4]
    scores_all = logits.float().sigmoid()
    if image_sizes is not None:
        # Clip before NMS, in model-input pixels, to the part of the input the image covers
        # (the reference does this): overlaps are then measured on the visible parts.
        limits = torch.tensor(image_sizes, dtype=torch.float32, device=boxes_all.device)  # [N, 2] (h, w)
        if scales is not None:
            limits = limits * scales.to(limits)[:, None]
        upper = limits.flip(1).repeat(1, 2)[:, None, :]  # [N, 1, 4] = (w, h, w, h)
        boxes_all = torch.minimum(boxes_all, upper).clamp_(min=0)

    results: list[dict[str, Tensor]] = []
    for i in range(batch):
        keep = scores_all[i] >= config.score_threshold
        boxes_i, scores_i, labels_i = boxes_all[i][keep], scores_all[i][keep], labels_all[i][keep]
        if config.nms == "soft":
            kept, scores_i = soft_nms(
                boxes_i, scores_i, labels_i, config.soft_nms_sigma, config.score_threshold, config.max_detections
            )
        elif config.nms == "hard":
            kept = batched_nms(boxes_i, scores_i, labels_i, config.iou_threshold)[: config.max_detections]
            scores_i = scores_i[kept]
        else:
            raise ValueError(f"unknown nms mode {config.nms!r}; expected 'hard' or 'soft'")
        boxes_i, labels_i = boxes_i[kept], labels_i[kept]
        if scales is not None:
            boxes_i = boxes_i / scales[i].to(boxes_i)
        if image_sizes is not None:
            boxes_i = clip_boxes(boxes_i, float(image_sizes[i][0]), float(image_sizes[i][1]))
        results.append({"boxes": boxes_i, "scores": scores_i, "labels": labels_i.to(torch.int64)})
    return results
