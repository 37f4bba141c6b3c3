"""Detection confusion matrix: dataset classes plus background, at one IoU and one score threshold.

Rows are the true class (the last row: background, i.e. a detection that matched no object);
columns the predicted class (the last column: background, i.e. an object nothing detected).
Matching per image, class-agnostic and greedy by descending score (as pycocotools orders
detections): a detection scoring >= ``score_threshold`` takes the still-unmatched ground-truth
box it overlaps most, if that IoU >= ``iou_threshold``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_iou

from ..fs import atomic_path

__all__ = ["ConfusionResult", "confusion_matrix", "plot_confusion"]


@dataclass
class ConfusionResult:
    """``matrix`` int64 [K + 1, K + 1] (rows true, columns predicted; index K = background)."""

    matrix: np.ndarray
    class_names: list[str]
    iou_threshold: float
    score_threshold: float

    @property
    def false_positives(self) -> dict[str, int]:
        """Per class: detections of that class that are not a correct match (column minus diagonal)."""
        m = self.matrix
        return {n: int(m[:, k].sum() - m[k, k]) for k, n in enumerate(self.class_names)}

    @property
    def missed(self) -> dict[str, int]:
        """Per class: objects not detected as their class (row minus diagonal)."""
        m = self.matrix
        return {n: int(m[k, :].sum() - m[k, k]) for k, n in enumerate(self.class_names)}

    def to_json(self) -> dict[str, Any]:
        return {
            "iou_threshold": self.iou_threshold,
            "score_threshold": self.score_threshold,
            "labels": [*self.class_names, "background"],
            "rows": "true class", "columns": "predicted class",
            "matrix": self.matrix.tolist(),
        }  # fmt: skip


def confusion_matrix(
    gts: Sequence[Mapping[str, Any]],
    dets: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    iou_threshold: float = 0.5,
    score_threshold: float = 0.25,
) -> ConfusionResult:
    """Count matches over images: ``gts[i]`` ``{"boxes" [M, 4] xyxy, "labels" [M]}``, ``dets[i]``
    ``{"boxes" [N, 4], "scores" [N], "labels" [N]}``, labels 0-based indices into ``class_names``.

    An optional ``gts[i]["difficult"]`` [M] (Pascal VOC's flag) marks objects that count as
    neither found nor missed, and a detection matched to one counts nowhere, as in VOC AP50."""
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"confusion IoU threshold {iou_threshold} must be in (0, 1]")
    if len(gts) != len(dets):
        raise ValueError(f"{len(gts)} ground-truth entries for {len(dets)} detection entries")
    k = len(class_names)
    m = np.zeros((k + 1, k + 1), dtype=np.int64)
    for gt, det in zip(gts, dets):
        g_boxes = torch.as_tensor(gt["boxes"], dtype=torch.float32).reshape(-1, 4)
        g_labels = torch.as_tensor(gt["labels"], dtype=torch.int64).reshape(-1)
        flags = gt.get("difficult")
        difficult = torch.zeros(len(g_boxes), dtype=torch.bool) if flags is None else torch.as_tensor(flags, dtype=torch.bool).reshape(-1)
        keep = torch.as_tensor(det["scores"]).reshape(-1) >= score_threshold
        d_boxes = torch.as_tensor(det["boxes"], dtype=torch.float32).reshape(-1, 4)[keep]
        d_labels = torch.as_tensor(det["labels"], dtype=torch.int64).reshape(-1)[keep]
        order = torch.argsort(torch.as_tensor(det["scores"]).reshape(-1)[keep], descending=True, stable=True)
        iou = box_iou(d_boxes, g_boxes) if len(d_boxes) and len(g_boxes) else torch.zeros((len(d_boxes), len(g_boxes)))
        taken = torch.zeros(len(g_boxes), dtype=torch.bool)
        for d in order.tolist():
            cand = iou[d].masked_fill(taken, -1.0)
            g = int(cand.argmax()) if len(cand) else -1
            if g >= 0 and float(cand[g]) >= iou_threshold:
                taken[g] = True
                if not difficult[g]:
                    m[int(g_labels[g]), int(d_labels[d])] += 1
            else:
                m[k, int(d_labels[d])] += 1  # background predicted as a class
        for g in (~taken & ~difficult).nonzero().flatten().tolist():
            m[int(g_labels[g]), k] += 1  # object missed
    return ConfusionResult(m, list(class_names), float(iou_threshold), float(score_threshold))


def plot_confusion(result: ConfusionResult, path: str | os.PathLike[str], max_classes: int = 40) -> Path:
    """Write the matrix as a PNG heat map with the counts (classes beyond ``max_classes`` are not labelled)."""
    # Figure + Agg canvas rather than pyplot: matplotlib.use("Agg") switched the caller's backend
    # (a notebook's plt.show() then showed nothing), and pyplot's figures are global state.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = [*result.class_names, "background"]
    n = len(labels)
    size = min(4 + 0.45 * n, 24)
    fig = Figure(figsize=(size, size * 0.85))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(result.matrix, cmap="Blues")
    if n <= max_classes + 1:
        ax.set_xticks(range(n), labels, rotation=90)
        ax.set_yticks(range(n), labels)
        peak = max(int(result.matrix.max()), 1)
        for (r, c), v in np.ndenumerate(result.matrix):
            if v:
                ax.text(c, r, str(v), ha="center", va="center", color="white" if v > peak / 2 else "black", fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion at IoU {result.iou_threshold:g}, score >= {result.score_threshold:g}")
    fig.tight_layout()
    out = Path(path)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return out
