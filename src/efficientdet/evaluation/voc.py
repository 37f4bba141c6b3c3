"""Pascal VOC AP at IoU 0.5 (the ``voc_eval.py`` protocol), vectorised with numpy.

Protocol, per class:

* detections of all images are ranked by score (stable, so ties keep input order);
* each detection takes the ground truth box it overlaps most (argmax IoU over *all* boxes of
  its class in its image, matched or not); IoU > 0.5 and that box not yet taken by a
  higher-scored detection -> TP, otherwise FP (a duplicate does not fall back to another box);
* a detection whose best box is "difficult" (key ``difficult``, else ``iscrowd``) counts as
  neither, and difficult boxes are left out of the number of positives;
* AP is the area under the precision envelope (all-point interpolation, VOC2010+), or the
  11-point mean of max precision at recall >= 0, .1, ..., 1 with ``use_07_metric``.

Unlike the original, IoU is computed on continuous xyxy pixel coordinates (no ``+1``), the
library's single box convention.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

import numpy as np
import torch

__all__ = ["VocResult", "voc_ap50"]

_IOU_THRESHOLD = 0.5


class VocResult(TypedDict):
    """``mAP`` (mean over classes with ground truth), per-class AP (NaN: no GT), #GT."""

    mAP: float
    per_class: dict[str, float]
    num_gt: dict[str, int]


def _np(x: Any, dtype: type, shape_tail: tuple[int, ...] = ()) -> np.ndarray:
    """Tensor / array / list -> numpy of ``dtype`` reshaped to ``[-1, *shape_tail]``."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype).reshape(-1, *shape_tail)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes: a [N, 4], b [M, 4] -> [N, M] (0 where the union is 0)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _match(det: np.ndarray, gt: np.ndarray, difficult: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One image and class, ``det`` [D, 4] sorted by score -> (tp [D], counted [D]) bools."""
    n = len(det)
    if len(gt) == 0:
        return np.zeros(n, bool), np.ones(n, bool)
    iou = _iou(det, gt)  # [D, G]
    best = iou.argmax(1)
    hit = iou[np.arange(n), best] > _IOU_THRESHOLD
    ignored = hit & difficult[best]
    candidate = np.flatnonzero(hit & ~ignored)
    # Greedy in score order == the first (highest-scored) candidate per GT box wins.
    _, first = np.unique(best[candidate], return_index=True)
    tp = np.zeros(n, bool)
    tp[candidate[first]] = True
    return tp, ~ignored


def _average_precision(tp: np.ndarray, num_pos: int, use_07_metric: bool) -> float:
    """AP from TP flags [D] in score order over ``num_pos`` positives."""
    tp_sum = np.cumsum(tp, dtype=np.float64)
    fp_sum = np.cumsum(~tp, dtype=np.float64)
    recall = tp_sum / num_pos
    precision = tp_sum / np.maximum(tp_sum + fp_sum, np.finfo(np.float64).eps)
    if use_07_metric:
        thresholds = np.linspace(0.0, 1.0, 11)
        reached = recall[None, :] >= thresholds[:, None]  # [11, D]
        return float(np.where(reached, precision[None, :], 0.0).max(1, initial=0.0).mean())
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope: max to the right
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]).sum())


def voc_ap50(
    gts: Sequence[Mapping[str, Any]],
    detections: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    use_07_metric: bool = False,
) -> VocResult:
    """Pascal VOC AP@0.5 per class and their mean.

    ``gts[i]``: ``boxes`` [M, 4] xyxy, ``labels`` [M] 0-based, optional ``difficult`` (or
    ``iscrowd``) [M]; ``detections[i]`` (same image): ``boxes`` [N, 4], ``scores`` [N],
    ``labels`` [N]. A class without (non-difficult) ground truth gets AP NaN and is left out
    of ``mAP``.
    """
    if len(gts) != len(detections):
        raise ValueError(f"{len(gts)} ground-truth dicts for {len(detections)} detection dicts")
    k = len(class_names)
    num_pos = np.zeros(k, np.int64)
    tps: list[list[np.ndarray]] = [[] for _ in range(k)]
    scores: list[list[np.ndarray]] = [[] for _ in range(k)]
    for gt, det in zip(gts, detections):
        g_boxes = _np(gt["boxes"], np.float64, (4,))
        g_labels = _np(gt["labels"], np.int64)
        flag = gt.get("difficult", gt.get("iscrowd"))
        g_diff = _np(flag, bool) if flag is not None else np.zeros(len(g_boxes), bool)
        d_boxes = _np(det["boxes"], np.float64, (4,))
        d_scores = _np(det["scores"], np.float64)
        d_labels = _np(det["labels"], np.int64)
        for labels in (g_labels, d_labels):
            if len(labels) and (labels.min() < 0 or labels.max() >= k):
                raise ValueError(f"labels must be in [0, {k})")
        num_pos += np.bincount(g_labels[~g_diff], minlength=k)
        for c in np.unique(d_labels):
            sel = np.flatnonzero(d_labels == c)
            sel = sel[np.argsort(-d_scores[sel], kind="stable")]
            g_sel = g_labels == c
            tp, counted = _match(d_boxes[sel], g_boxes[g_sel], g_diff[g_sel])
            tps[c].append(tp[counted])
            scores[c].append(d_scores[sel][counted])

    per_class: dict[str, float] = {}
    for c, name in enumerate(class_names):
        if num_pos[c] == 0:
            per_class[str(name)] = float("nan")
            continue
        tp = np.concatenate(tps[c]) if tps[c] else np.zeros(0, bool)
        s = np.concatenate(scores[c]) if scores[c] else np.zeros(0)
        # Stable global ranking; within an image it repeats the order used for matching.
        order = np.argsort(-s, kind="stable")
        per_class[str(name)] = _average_precision(tp[order], int(num_pos[c]), use_07_metric)
    valid = [v for v in per_class.values() if not np.isnan(v)]
    return VocResult(
        mAP=float(np.mean(valid)) if valid else float("nan"),
        per_class=per_class,
        num_gt={str(n): int(num_pos[c]) for c, n in enumerate(class_names)},
    )
