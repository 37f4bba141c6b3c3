"""Precision-recall curves from a COCO :class:`~efficientdet.evaluation.coco.EvalResult`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..fs import atomic_path

if TYPE_CHECKING:  # coco.py re-exports this module's function, so no runtime import back
    from .coco import EvalResult

__all__ = ["plot_precision_recall"]


def plot_precision_recall(
    result: EvalResult,
    path: str | os.PathLike,
    iou: float = 0.5,
    max_classes: int = 20,
) -> Path:
    """Write a PNG of COCO's interpolated precision vs recall at IoU ``iou``.

    One curve per class with ground truth (the ``max_classes`` best by AP when there are
    more, to keep the legend readable) plus the mean over *all* classes with ground truth,
    whose area is the AP at that IoU. Curves are area "all", 100 detections per image.
    """
    # Figure + Agg canvas rather than pyplot: no global backend switch, no GUI, thread-safe.
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    matches = np.flatnonzero(np.isclose(result.iou_thresholds, iou))
    if matches.size == 0:
        raise ValueError(f"iou {iou} is not one of {result.iou_thresholds.round(2).tolist()}")
    curves = result.precision[matches[0], :, :, 0, -1]  # [R, K], area all, maxDets 100
    recall = result.recall_thresholds  # [R]
    with_gt = np.flatnonzero((curves > -1).any(0))
    ap = curves[:, with_gt].mean(0) if with_gt.size else np.zeros(0)
    shown = with_gt[np.argsort(-ap, kind="stable")[:max_classes]]

    fig = Figure(figsize=(10, 6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap = colormaps["tab20"]
    for i, k in enumerate(shown):
        ax.plot(recall, curves[:, k], lw=1.2, color=cmap(i % 20),
                label=f"{result.class_names[k]} ({curves[:, k].mean():.3f})")  # fmt: skip
    if with_gt.size:
        mean = curves[:, with_gt].mean(1)
        ax.plot(recall, mean, lw=2.5, color="black", label=f"mean ({mean.mean():.3f})")
    else:
        ax.text(0.5, 0.5, "no ground truth", ha="center", va="center", transform=ax.transAxes)
    title = f"Precision-recall @ IoU {iou:.2f}"
    if with_gt.size > shown.size:
        title += f" (top {shown.size} of {with_gt.size} classes by AP)"
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall", ylabel="precision", title=title)
    ax.grid(alpha=0.3)
    if with_gt.size:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, title="class (AP)")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
