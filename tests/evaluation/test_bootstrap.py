"""The paired bootstrap of an AP difference: each draw's AP is what pycocotools gives for a
dataset that holds the drawn images (repeats as copies), and the interval behaves."""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any

import numpy as np
import pytest

from efficientdet.evaluation.bootstrap import paired_ap_interval, per_image_evaluation, resampled_ap
from efficientdet.evaluation.coco import CocoEvaluator

CLASSES = ["cat", "dog"]


def _scene(seed: int, images: int = 12, jitter: float = 6.0, misses: float = 0.2) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A COCO ground-truth dict (1-3 objects per 200x200 image, 2 classes) and detections of
    it: boxes moved by up to ``jitter`` px, ``misses`` of the objects lost, one false positive
    per image, scores random."""
    rng = np.random.default_rng(seed)
    gt: dict[str, Any] = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]}
    dets = []
    for image_id in range(1, images + 1):
        gt["images"].append({"id": image_id, "height": 200, "width": 200})
        for _ in range(rng.integers(1, 4)):
            x, y, w, h = (float(v) for v in rng.uniform([0, 0, 20, 20], [120, 120, 80, 80]))
            cat = int(rng.integers(1, 3))
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": image_id, "category_id": cat,
                                      "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})  # fmt: skip
            if rng.random() > misses:
                moved = [x + rng.uniform(-jitter, jitter), y + rng.uniform(-jitter, jitter), w, h]
                dets.append({"image_id": image_id, "category_id": cat, "bbox": moved, "score": float(rng.random())})
        dets.append({"image_id": image_id, "category_id": 1, "bbox": [150.0, 150.0, 30.0, 30.0], "score": float(rng.random())})
    return gt, dets


def _ap_of_copies(gt: dict[str, Any], dets: list[dict[str, Any]], drawn_ids: list[int]) -> float:
    """COCO AP of a dataset made of the drawn images, each repeat a renamed copy."""
    new_gt = {"images": [], "annotations": [], "categories": gt["categories"]}
    new_dets = []
    for new_id, old in enumerate(drawn_ids, start=1):
        new_gt["images"].append({"id": new_id, "height": 200, "width": 200})
        for ann in gt["annotations"]:
            if ann["image_id"] == old:
                new_gt["annotations"].append(dict(ann, id=len(new_gt["annotations"]) + 1, image_id=new_id))
        new_dets += [dict(d, bbox=list(d["bbox"]), image_id=new_id) for d in dets if d["image_id"] == old]
    evaluation = per_image_evaluation(CocoEvaluator(new_gt).coco_gt, new_dets, list(range(1, len(drawn_ids) + 1)))
    return resampled_ap(evaluation, np.arange(len(drawn_ids)))


def test_all_images_once_is_the_coco_ap() -> None:
    gt, dets = _scene(0)
    evaluator = CocoEvaluator(copy.deepcopy(gt))
    ids = [im["id"] for im in gt["images"]]
    coco_ap = per_image_evaluation(evaluator.coco_gt, dets, ids)
    from pycocotools.cocoeval import COCOeval

    reference = COCOeval(evaluator.coco_gt, evaluator.coco_gt.loadRes(copy.deepcopy(dets)), "bbox")
    reference.evaluate(), reference.accumulate(), reference.summarize()
    assert resampled_ap(coco_ap, np.arange(len(ids))) == pytest.approx(reference.stats[0], abs=1e-12)


def test_a_draw_with_repeats_is_the_ap_of_a_dataset_of_copies() -> None:
    gt, dets = _scene(1)
    ids = [im["id"] for im in gt["images"]]
    evaluation = per_image_evaluation(CocoEvaluator(copy.deepcopy(gt)).coco_gt, dets, ids)
    for positions in ([0, 0, 3, 5, 5, 5, 11], [2, 7, 7, 1, 0, 9, 4, 4, 10, 11, 6, 3]):
        drawn = resampled_ap(evaluation, np.asarray(positions))
        assert drawn == pytest.approx(_ap_of_copies(gt, dets, [ids[p] for p in positions]), abs=1e-12)


def test_interval_of_identical_and_of_clearly_different_detections() -> None:
    gt, good = _scene(2, images=30, jitter=1.0, misses=0.0)
    _, bad = _scene(2, images=30, jitter=14.0, misses=0.5)
    coco_gt = CocoEvaluator(copy.deepcopy(gt)).coco_gt
    ids = [im["id"] for im in gt["images"]]
    first, second = per_image_evaluation(coco_gt, good, ids), per_image_evaluation(coco_gt, bad, ids)
    same = paired_ap_interval(first, first, resamples=50)
    assert same.difference == same.low == same.high == 0.0
    assert "includes 0" in same.summary()
    apart = paired_ap_interval(first, second, resamples=100)
    assert apart.difference > 0.2 and 0 < apart.low < apart.difference < apart.high
    assert "excludes 0" in apart.summary() and apart.images == 30 and apart.resamples == 100
    assert paired_ap_interval(first, second, resamples=100).low == apart.low  # seeded: reproducible


def test_no_detections_and_bad_arguments() -> None:
    gt, dets = _scene(3)
    coco_gt = CocoEvaluator(copy.deepcopy(gt)).coco_gt
    ids = [im["id"] for im in gt["images"]]
    empty = per_image_evaluation(coco_gt, [], ids)
    assert resampled_ap(empty, np.arange(len(ids))) == 0.0  # every object missed
    full = per_image_evaluation(coco_gt, dets, ids)
    assert paired_ap_interval(full, empty, resamples=20).low > 0
    with pytest.raises(ValueError, match=r"^both evaluations must cover the same images$"):
        paired_ap_interval(full, per_image_evaluation(coco_gt, dets, ids[:-1]))
    with pytest.raises(ValueError, match=r"^need 0 < confidence < 1 and resamples >= 1$"):
        paired_ap_interval(full, full, confidence=1.0)


def test_images_without_ground_truth_give_no_interval_and_no_numpy_warning() -> None:
    """``eval --compare`` on images without objects printed numpy's "All-NaN slice encountered"."""
    gt, dets = _scene(3)
    gt = {**copy.deepcopy(gt), "annotations": []}
    coco_gt = CocoEvaluator(gt).coco_gt
    ids = [im["id"] for im in gt["images"]]
    first, second = per_image_evaluation(coco_gt, dets, ids), per_image_evaluation(coco_gt, [], ids)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        interval = paired_ap_interval(first, second, resamples=20)
    assert math.isnan(interval.difference) and math.isnan(interval.low) and math.isnan(interval.high)
