"""Class-wise hard NMS (torchvision) and a round-vectorised Gaussian soft-NMS."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms as _tv_batched_nms

from efficientdet.ops.boxes import box_iou

__all__ = ["batched_nms", "hard_nms_top", "soft_nms"]


def batched_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """Class-wise hard NMS: boxes [N, 4] xyxy, scores [N], labels [N] -> kept indices [M] int64,
    sorted by score descending. Boxes of different labels never suppress each other."""
    return _tv_batched_nms(boxes, scores, labels, iou_threshold)


def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    sigma: float = 0.5,
    score_threshold: float = 0.001,
    max_detections: int = 100,
) -> tuple[Tensor, Tensor]:
    """Class-wise Gaussian soft-NMS (Bodla et al. 2017): score *= exp(-iou^2 / sigma).

    boxes [N, 4] xyxy, scores [N], labels [N] -> (kept indices [M] int64, new scores [M]),
    sorted by new score descending, M <= max_detections. Same result as running the sequential
    algorithm per class (select the best remaining box, decay the others of its class, drop boxes
    below ``score_threshold``) and keeping the overall top ``max_detections``.

    Vectorised over classes: each round selects the current best box of *every* class at once and
    decays the remaining boxes of those classes, so there are R = (most boxes selected in one
    class) rounds, not N. A round computes IoUs of the B <= C selected boxes against the n still
    active boxes: O(B * n) time and memory, never an N x N matrix (rows computed on demand cost the
    same as gathering rows of a precomputed matrix). Total O(R * C * N) worst case, O(N^2) for a
    single class. Rounds also stop early: once ``max_detections`` are selected, a box whose score
    is not above the current max_detections-th best can never enter the result (scores only
    decrease, and anything it would be selected before has an even lower score), so it is dropped.
    """
    if sigma <= 0:
        raise ValueError(f"soft-NMS sigma must be positive, got {sigma}")
    n = boxes.shape[0]
    empty = (torch.empty(0, dtype=torch.int64, device=boxes.device), scores.new_empty(0))
    if n == 0 or max_detections <= 0:
        return empty

    # Contiguous class ids 0..C-1 so per-class maxima are a scatter over C slots.
    _, cls = torch.unique(labels, return_inverse=True)
    sel_idx, sel_score = _soft_nms_rounds(boxes, scores.clone(), cls, sigma, score_threshold, max_detections)
    if not sel_idx:
        return empty
    keep = torch.cat(sel_idx)
    new_scores = torch.cat(sel_score)
    order = torch.sort(new_scores, descending=True, stable=True).indices[:max_detections]
    return keep[order], new_scores[order]


def _soft_nms_rounds(
    boxes: Tensor, cur: Tensor, cls: Tensor, sigma: float, score_threshold: float, max_detections: int
) -> tuple[list[Tensor], list[Tensor]]:
    """The rounds of :func:`soft_nms` over boxes [N, 4], scores ``cur`` [N] (decayed in place) and
    class ids ``cls`` [N] in 0..C-1: the indices [B] and scores [B] each round selected."""
    device = boxes.device
    n = boxes.shape[0]
    num_cls = int(cls.max()) + 1
    idx = torch.arange(n, device=device)
    active = cur >= score_threshold
    sel_idx: list[Tensor] = []
    sel_score: list[Tensor] = []
    num_selected = 0
    neg_inf = torch.tensor(float("-inf"), dtype=cur.dtype, device=device)

    while bool(active.any()):
        masked = torch.where(active, cur, neg_inf)
        cls_max = torch.full((num_cls,), float("-inf"), dtype=cur.dtype, device=device)
        cls_max = cls_max.scatter_reduce(0, cls, masked, "amax")
        # One winner per class; ties go to the lowest index, as a sequential argmax would.
        is_best = active & (masked == cls_max[cls])
        cand = torch.where(is_best, idx, n)
        best = torch.full((num_cls,), n, dtype=torch.int64, device=device).scatter_reduce(0, cls, cand, "amin")
        best = best[best < n]  # [B] selected this round, one per class that still has boxes
        sel_idx.append(best)
        sel_score.append(cur[best])
        active[best] = False
        num_selected += best.numel()

        # Decay the active boxes of the winners' classes; each box has one class, so at most one
        # row of the masked IoU is non-zero per column and the sum of squares is that one IoU^2.
        rest = active.nonzero().squeeze(1)
        if rest.numel():
            iou = box_iou(boxes[best], boxes[rest]) * (cls[best][:, None] == cls[rest][None, :])
            cur[rest] = cur[rest] * torch.exp(-(iou * iou).sum(0) / sigma)
            active[rest] = cur[rest] >= score_threshold
        if num_selected >= max_detections:
            kth = torch.cat(sel_score).topk(max_detections).values[-1]
            active &= cur > kth
    return sel_idx, sel_score


def hard_nms_top(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float, max_detections: int) -> Tensor:
    """The first ``max_detections`` of class-wise hard NMS's kept indices (score descending).

    Greedy NMS decides on a box from the higher-scoring boxes of its class only, so NMS on the
    P best boxes keeps exactly the full run's kept boxes among them; once that already gives
    ``max_detections`` boxes, nothing after them can enter the result. With the usual 5000
    candidates and 100 detections a prefix of a few hundred boxes mostly suffices, saving
    most of the NMS time (torchvision's loops over ~all classes cost a fixed amount each).
    """
    n = scores.shape[0]
    if max_detections <= 0 or n == 0:
        return torch.empty(0, dtype=torch.int64, device=scores.device)
    order = scores.argsort(descending=True, stable=True)
    size = min(n, 4 * max_detections)
    while True:
        prefix = order[:size]
        kept = batched_nms(boxes[prefix], scores[prefix], labels[prefix], iou_threshold)
        if kept.numel() >= max_detections or size == n:
            return prefix[kept[:max_detections]]
        size = min(n, 4 * size)
