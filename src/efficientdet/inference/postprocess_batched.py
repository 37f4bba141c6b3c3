"""Hard-NMS post-processing of a whole batch at once, for GPUs.

:func:`efficientdet.inference.postprocess.postprocess` works image by image and avoids a top-k over all
T*K logits, which suits CPUs. On a GPU its cost is not arithmetic but the ~40 small kernels and
several host syncs per image: at D0 batch 16 on an H200 post-processing took 49% of end-to-end
time (73 ms per batch, effdet's 39 ms). Here the whole batch goes through one top-k, one decode
and one class-and-image-wise NMS call, with one host sync to split the result; images whose
first NMS round is not conclusive (see ``_hard_nms_top``) are finished one by one. The
detections are the same as the per-image path's.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from efficientdet.config import PostprocessConfig
from efficientdet.ops.box_coder import decode
from efficientdet.ops.boxes import clip_boxes
from efficientdet.ops.nms import batched_nms

__all__ = ["postprocess_batched"]


def postprocess_batched(
    cls: Tensor,
    box: Tensor,
    anchors: Tensor,
    config: PostprocessConfig,
    scales: Tensor | None,
    image_sizes: Sequence[tuple[int, int]] | None,
    upper: Tensor | None,
) -> list[dict[str, Tensor]]:
    """Flattened head outputs cls [N, T, K] and box [N, T, 4] -> one dict per image
    (``boxes`` [M, 4], ``scores`` [M], ``labels`` [M] int64), as ``postprocess`` with
    ``config.nms == "hard"``. anchors [T, 4] float32 on the outputs' device; scales [N] or None;
    upper [N, 4] (the clip limits in model-input pixels) or None."""
    from efficientdet.inference.postprocess import _hard_nms_top  # the per-image rule, for the stragglers

    n, num_anchors, num_classes = cls.shape
    device = cls.device
    k = min(config.max_candidates, num_anchors * num_classes)
    values, flat = cls.reshape(n, -1).topk(k, dim=1)  # [N, k], best first
    anchor_idx, labels = flat // num_classes, flat % num_classes
    codes = box.gather(1, anchor_idx.unsqueeze(-1).expand(-1, -1, 4))
    boxes = decode(codes.float(), anchors[anchor_idx])  # [N, k, 4]
    scores = values.float().sigmoid()  # sorted: the threshold keeps a prefix of each row
    if upper is not None:
        boxes = torch.minimum(boxes, upper.to(boxes)[:, None, :]).clamp_(min=0)
    valid = (scores >= config.score_threshold).sum(1)  # [N]
    max_det = config.max_detections
    prefix = min(k, 4 * max_det)  # as _hard_nms_top's first round

    # One NMS over every image's first `prefix` valid candidates; groups keep images apart.
    position = torch.arange(prefix, device=device).expand(n, prefix)
    selected = position < valid[:, None]
    image = torch.arange(n, device=device)[:, None].expand(n, prefix)[selected]
    position = position[selected]
    sel_labels = labels[:, :prefix][selected]
    kept = batched_nms(
        boxes[:, :prefix][selected], scores[:, :prefix][selected], image * num_classes + sel_labels,
        config.iou_threshold,
    )  # fmt: skip
    kept = kept[image[kept].argsort(stable=True)]  # by image, each image's by score (NMS's order)
    counts = torch.bincount(image[kept], minlength=n)
    counts_list, valid_list = counts.tolist(), valid.tolist()  # the one host sync

    results: list[dict[str, Tensor]] = []
    start = 0
    for i in range(n):
        count, num_valid = counts_list[i], valid_list[i]
        if count >= max_det or prefix >= num_valid:
            rows = position[kept[start : start + min(count, max_det)]]
        else:  # too few survivors among the first `prefix`: this image needs more candidates
            rows = _hard_nms_top(
                boxes[i, :num_valid], scores[i, :num_valid], labels[i, :num_valid], config.iou_threshold, max_det
            )
        start += count
        out = boxes[i, rows]
        if scales is not None:
            out = out / scales[i].to(out)
        if image_sizes is not None:
            out = clip_boxes(out, float(image_sizes[i][0]), float(image_sizes[i][1]))
        results.append({"boxes": out, "scores": scores[i, rows], "labels": labels[i, rows]})
    return results
