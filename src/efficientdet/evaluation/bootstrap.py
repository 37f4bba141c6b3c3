"""How precisely a validation set measures the AP difference of two models: a paired bootstrap.

On a small set one image can move AP by a point, so ``eval --compare``'s difference needs its
resolution next to it. The images are drawn with replacement, the *same* draw for both models
(paired: what the two share, such as a hard image, cancels), and each draw's COCO AP is
pycocotools' own accumulation over the per-image matches it computed once: for every draw, the
per-image results are laid out in the drawn order and ``COCOeval.accumulate`` runs on them.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

__all__ = ["MAX_BOOTSTRAP_IMAGES", "ApInterval", "paired_ap_interval", "per_image_evaluation", "resampled_ap"]

# Above this many images the accumulations get slow (seconds per draw on COCO val) and the
# difference is measured more precisely anyway.
MAX_BOOTSTRAP_IMAGES = 1000


@dataclass(frozen=True)
class ApInterval:
    """AP(first) - AP(second) on the whole set, and the ``confidence`` interval of that
    difference over ``resamples`` paired draws of the ``images``."""

    difference: float
    low: float
    high: float
    confidence: float
    resamples: int
    images: int

    def summary(self) -> str:
        """One line for the CLI."""
        verdict = "excludes 0: the set separates them" if self.low > 0 or self.high < 0 else "includes 0: within this set's resolution"
        return (
            f"AP difference {self.difference:+.3f}, {self.confidence:.0%} interval [{self.low:+.3f}, {self.high:+.3f}] "
            f"over {self.resamples} paired resamples of the {self.images} images ({verdict})"
        )


def per_image_evaluation(coco_gt: COCO, results: list[dict[str, Any]], image_ids: Sequence[int]) -> COCOeval:
    """COCOeval of ``results`` (COCO results format) on ``image_ids``, evaluated per image
    (``evaluate()`` only: :func:`resampled_ap` accumulates it for any draw of the images)."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        detections = coco_gt.loadRes(copy.deepcopy(results)) if results else COCO()
        if not results:  # loadRes refuses an empty list: an empty result set over the same images
            detections.dataset = {"images": coco_gt.dataset["images"], "categories": coco_gt.dataset["categories"],
                                  "annotations": []}  # fmt: skip
            detections.createIndex()
        evaluation = COCOeval(coco_gt, detections, "bbox")
        evaluation.params.imgIds = sorted(int(i) for i in image_ids)
        evaluation.evaluate()
    return evaluation


def resampled_ap(evaluation: COCOeval, positions: np.ndarray) -> float:
    """COCO AP (IoU 0.50:0.95, all areas, 100 detections) of the images at ``positions``
    (indices into ``evaluation.params.imgIds``, repeats allowed) from an evaluated COCOeval."""
    import contextlib
    import io

    base = evaluation.params
    images = len(base.imgIds)
    area = [tuple(a) for a in base.areaRng].index(tuple(base.areaRng[base.areaRngLbl.index("all")]))
    drawn = copy.copy(evaluation)  # shares the per-image results, gets its own layout and params
    drawn.evalImgs = [evaluation.evalImgs[k * len(base.areaRng) * images + area * images + int(i)]
                      for k in range(len(base.catIds)) for i in positions]  # fmt: skip
    params = copy.deepcopy(base)
    params.imgIds = [base.imgIds[int(i)] for i in positions]
    params.areaRng, params.areaRngLbl, params.maxDets = [base.areaRng[area]], ["all"], [max(base.maxDets)]
    drawn.params, drawn._paramsEval = params, copy.deepcopy(params)
    with contextlib.redirect_stdout(io.StringIO()):
        drawn.accumulate()
    precision = drawn.eval["precision"]
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else float("nan")


def paired_ap_interval(
    first: COCOeval, second: COCOeval, resamples: int = 300, confidence: float = 0.95, seed: int = 0
) -> ApInterval:
    """The paired bootstrap interval of AP(first) - AP(second); both evaluated (by
    :func:`per_image_evaluation`) on the same ground truth and images."""
    if list(first.params.imgIds) != list(second.params.imgIds):
        raise ValueError("both evaluations must cover the same images")
    if not 0 < confidence < 1 or resamples < 1:
        raise ValueError("need 0 < confidence < 1 and resamples >= 1")
    count = len(first.params.imgIds)
    every = np.arange(count)
    difference = resampled_ap(first, every) - resampled_ap(second, every)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        positions = rng.integers(0, count, count)
        draws.append(resampled_ap(first, positions) - resampled_ap(second, positions))
    tail = (1 - confidence) / 2
    values = np.asarray(draws)
    if np.isnan(values).all():  # no ground truth, no AP: numpy would warn "All-NaN slice" on the terminal
        return ApInterval(difference, math.nan, math.nan, confidence, resamples, count)
    low, high = np.nanquantile(values, [tail, 1 - tail])
    return ApInterval(difference, float(low), float(high), confidence, resamples, count)
