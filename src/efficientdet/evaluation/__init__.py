"""Detection metrics: official COCO box AP (pycocotools), Pascal VOC AP50, PR plots, and the
paired bootstrap interval of two models' AP difference.

Quick use::

    from efficientdet.evaluation import CocoEvaluator
    evaluator = CocoEvaluator("instances_val2017.json")
    evaluator.update(image_ids, detector(images))   # Detector outputs, xyxy pixels
    result = evaluator.compute()
    print(result.table())
"""

from .bootstrap import ApInterval, paired_ap_interval, per_image_evaluation
from .coco import STAT_NAMES, CocoEvaluator, CocoGroundTruth, EvalResult, gt_list_to_coco
from .plots import plot_precision_recall
from .voc import VocResult, voc_ap50

__all__ = [
    "STAT_NAMES",
    "ApInterval",
    "CocoEvaluator",
    "CocoGroundTruth",
    "EvalResult",
    "VocResult",
    "gt_list_to_coco",
    "paired_ap_interval",
    "per_image_evaluation",
    "plot_precision_recall",
    "voc_ap50",
]
