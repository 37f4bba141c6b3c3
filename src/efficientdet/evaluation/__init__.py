"""Detection metrics: official COCO box AP (pycocotools), Pascal VOC AP50, PR plots.

Quick use::

    from efficientdet.evaluation import CocoEvaluator
    evaluator = CocoEvaluator("instances_val2017.json")
    evaluator.update(image_ids, detector(images))   # Detector outputs, xyxy pixels
    result = evaluator.compute()
    print(result.table())
"""

from .coco import STAT_NAMES, CocoEvaluator, CocoGroundTruth, EvalResult, gt_list_to_coco
from .plots import plot_precision_recall
from .voc import VocResult, voc_ap50

__all__ = [
    "STAT_NAMES",
    "CocoEvaluator",
    "CocoGroundTruth",
    "EvalResult",
    "VocResult",
    "gt_list_to_coco",
    "plot_precision_recall",
    "voc_ap50",
]
