"""The training-start anchor check and the ``anchors.*`` training overrides.

The check measures, on a sample of at most a few thousand training boxes, how many some anchor
can match (:mod:`efficientdet.ops.anchor_stats`); below ``anchors.min_recall`` it returns one
warning line with the numbers and the fitted overrides. The config is never changed: the user
opts in by passing the overrides.
"""

from __future__ import annotations

from typing import Any

from ..config import ModelConfig
from ..data.anchor_boxes import model_input_boxes
from ..data.records import DatasetIndex
from ..ops.anchor_fit import fit_anchors
from ..ops.anchor_stats import anchor_recall
from .config import TrainConfig

__all__ = ["anchor_model_overrides", "anchor_warning"]

SAMPLE_BOXES = 4000


def anchor_model_overrides(cfg: TrainConfig) -> dict[str, Any]:
    """``ModelConfig.replace`` keys for the ``anchors.*`` fields the user set."""
    a = cfg.anchors
    out: dict[str, Any] = {}
    if a.anchor_scale is not None:
        out["anchors.anchor_scale"] = float(a.anchor_scale)
    if a.num_scales is not None:
        out["anchors.num_scales"] = int(a.num_scales)
    if a.aspect_ratios is not None:
        ratios = tuple((float(r[0]), float(r[1])) for r in a.aspect_ratios)
        if not ratios or any(min(r) <= 0 for r in ratios):
            raise ValueError(f"anchors.aspect_ratios={a.aspect_ratios}: need positive [x, y] pairs")
        out["anchors.aspect_ratios"] = ratios
    return out


def anchor_warning(cfg: TrainConfig, index: DatasetIndex, model_config: ModelConfig) -> str | None:
    """One warning line when the anchors match fewer than ``cfg.anchors.min_recall`` of a
    sample of ``index``'s boxes (as the training transform scales them), else None."""
    if not cfg.anchors.check:
        return None
    size = model_config.image_size
    boxes, _ = model_input_boxes(index, size, tile=cfg.data.crop_size, max_boxes=SAMPLE_BOXES, seed=cfg.seed)
    if boxes.shape[0] == 0:
        return None
    report = anchor_recall(boxes, model_config.anchors, size)
    if report.recall >= cfg.anchors.min_recall:
        return None
    small = report.by_size["small"]
    fit = fit_anchors(boxes, model_config.anchors, size)
    advice = (
        f"recall {fit.recall_after:.3f} with: " + " ".join(fit.overrides)
        if fit.recall_after > report.recall
        else "no anchor shapes found that do better (efficientdet anchors --help)"
    )
    return (
        f"anchors match only {report.recall:.3f} of {report.num_boxes} sampled training boxes at IoU 0.5 "
        f"(small boxes: {small[0]:.3f} of {small[1]}), below anchors.min_recall={cfg.anchors.min_recall:g}; "
        f"{advice}"
    )
