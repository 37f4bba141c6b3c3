"""Official EfficientDet post-processing: top-k, decode, class-wise NMS, top detections, rescale.

Two paths give the same detections. :func:`postprocess` works image by image and avoids a
top-k over all T*K logits (:mod:`.candidates`), which suits CPUs. On a GPU the cost is not
arithmetic but many small kernels and host syncs per image, so there hard NMS runs
:func:`postprocess_batched`: one top-k, one decode and one class-and-image-wise NMS call for the
whole batch, with one host sync; images whose first NMS round is not conclusive (see
:func:`~efficientdet.ops.nms.hard_nms_top`) are finished one by one.
:func:`postprocess_candidates` starts from anchors an ONNX graph pre-selected.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..config import PostprocessConfig
from ..ops.box_coder import decode
from ..ops.boxes import clip_boxes
from ..ops.nms import batched_nms, hard_nms_top, soft_nms
from ..ops.outputs import check_levels, flatten_outputs
from .candidates import LevelOutputs, logit_floor, top_candidates, top_of_rows

__all__ = ["clip_limits", "postprocess", "postprocess_batched", "postprocess_candidates"]


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
    check_levels(class_outputs, box_outputs, num_classes)
    cls, box = LevelOutputs(class_outputs, num_classes), LevelOutputs(box_outputs, 4)
    batch, num_anchors = class_outputs[0].shape[0], cls.total
    if anchors.shape[0] != num_anchors:
        raise ValueError(f"head outputs give {num_anchors} anchors but {anchors.shape[0]} anchors were passed")
    scales = _per_image_scales(scales, image_sizes, batch)
    upper = clip_limits(anchors, scales, image_sizes)
    if class_outputs[0].device.type == "cuda" and config.nms == "hard":
        # GPUs: per-image work is launch- and sync-bound; the batched path gives the same detections
        flat_cls, flat_box = flatten_outputs(class_outputs, box_outputs, num_classes)
        anchors = anchors.to(flat_cls.device, torch.float32)
        return postprocess_batched(flat_cls, flat_box, anchors, config, scales, image_sizes, upper)
    k = min(config.max_candidates, num_anchors * num_classes)
    best = cls.amax()  # [N, T]
    anchors = anchors.to(best.device, torch.float32)

    results: list[dict[str, Tensor]] = []
    for i in range(batch):
        logits, anchor_idx, labels_i = top_candidates(cls, best[i], i, k, logit_floor(config.score_threshold))
        codes = box.rows(i, anchor_idx)
        results.append(_detections(logits, anchor_idx, labels_i, codes, anchors, config, i, upper, scales, image_sizes))
    return results


def postprocess_candidates(
    logits: Tensor,
    codes: Tensor,
    anchor_idx: Tensor,
    anchors: Tensor,
    config: PostprocessConfig,
    scales: Tensor | None = None,
    image_sizes: Sequence[tuple[int, int]] | None = None,
) -> list[dict[str, Tensor]]:
    """:func:`postprocess` from pre-selected anchors: the same detections, from ~T/C of the data.

    logits [N, C, K], codes [N, C, 4], anchor_idx [N, C] (any order): the rows of the C anchors
    with the largest per-anchor maximum logit (an ONNX graph exported with ``candidates=True``
    selects them). Exact when ``config.max_candidates`` <= C: the top-k logits over all T*K lie
    in the k anchors with the largest maxima (see :func:`top_candidates`).
    """
    batch, num_rows, _ = logits.shape
    if config.max_candidates > num_rows and num_rows < anchors.shape[0]:
        raise ValueError(
            f"max_candidates {config.max_candidates} needs that many pre-selected anchors, the graph "
            f"gives {num_rows}; export it with max_candidates >= {config.max_candidates}"
        )
    scales = _per_image_scales(scales, image_sizes, batch)
    upper = clip_limits(anchors, scales, image_sizes)
    anchors = anchors.to(logits.device, torch.float32)
    k = min(config.max_candidates, num_rows * logits.shape[2])
    min_logit = logit_floor(config.score_threshold)
    results: list[dict[str, Tensor]] = []
    for i in range(batch):
        values, rows, labels_i = top_of_rows(logits[i], k, min_logit)
        results.append(
            _detections(
                values, anchor_idx[i, rows], labels_i, codes[i, rows], anchors, config, i, upper, scales, image_sizes
            )
        )
    return results


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
    prefix = min(k, 4 * max_det)  # as hard_nms_top's first round

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
            rows = hard_nms_top(
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


def _per_image_scales(
    scales: Tensor | Sequence[float] | None, image_sizes: Sequence[tuple[int, int]] | None, batch: int
) -> Tensor | None:
    """``scales`` as a float32 [N] tensor (or None); both checked to have one entry per image."""
    if scales is not None:
        scales = torch.as_tensor(scales, dtype=torch.float32).reshape(-1)
        if scales.numel() != batch:
            raise ValueError(f"need one scale per image ({batch}), got {scales.numel()}")
    if image_sizes is not None and len(image_sizes) != batch:
        raise ValueError(f"need one image size per image ({batch}), got {len(image_sizes)}")
    return scales


def clip_limits(
    anchors: Tensor, scales: Tensor | None, image_sizes: Sequence[tuple[int, int]] | None
) -> Tensor | None:
    """[N, 4] (w, h, w, h) of each image's region in model-input pixels, or None.

    Boxes are clipped before NMS, in model-input pixels, to the part of the input the image
    covers (the reference does this): overlaps are then measured on the visible parts.
    """
    if image_sizes is None:
        return None
    limits = torch.tensor(image_sizes, dtype=torch.float32, device=anchors.device)  # [N, 2] (h, w)
    if scales is not None:
        limits = limits * scales.to(limits)[:, None]
    return limits.flip(1).repeat(1, 2)


def _detections(
    logits: Tensor,
    anchor_idx: Tensor,
    labels: Tensor,
    codes: Tensor,
    anchors: Tensor,
    config: PostprocessConfig,
    i: int,
    upper: Tensor | None,
    scales: Tensor | None,
    image_sizes: Sequence[tuple[int, int]] | None,
) -> dict[str, Tensor]:
    """Image ``i``'s candidates (logits [k], anchor indices [k], labels [k], box codes [k, 4])
    -> its detections: sigmoid, decode, clip, threshold, NMS, top detections, rescale."""
    boxes = decode(codes.float(), anchors[anchor_idx])  # [k, 4]
    scores = logits.float().sigmoid()
    if upper is not None:
        boxes = torch.minimum(boxes, upper[i].to(boxes)).clamp_(min=0)
    keep = scores >= config.score_threshold
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    if config.nms == "soft":
        kept, scores = soft_nms(boxes, scores, labels, config.soft_nms_sigma, config.score_threshold, config.max_detections)
    elif config.nms == "hard":
        kept = hard_nms_top(boxes, scores, labels, config.iou_threshold, config.max_detections)
        scores = scores[kept]
    else:
        raise ValueError(f"unknown nms mode {config.nms!r}; expected 'hard' or 'soft'")
    boxes, labels = boxes[kept], labels[kept]
    if scales is not None:
        boxes = boxes / scales[i].to(boxes)
    if image_sizes is not None:
        boxes = clip_boxes(boxes, float(image_sizes[i][0]), float(image_sizes[i][1]))
    return {"boxes": boxes, "scores": scores, "labels": labels.to(torch.int64)}
