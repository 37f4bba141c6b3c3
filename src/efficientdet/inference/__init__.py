"""The inference pipeline: preprocess -> network -> postprocess, and the detectors that run it."""

from typing import TYPE_CHECKING

from ..lazy import lazy_attributes

if TYPE_CHECKING:
    from .detector import Detector, inference_model
    from .protocol import ImageDetector, Prepared, StagedDetector
    from .sliced import SlicedDetector
    from .tta import TTADetector, weighted_box_fusion

_LAZY = {
    "Detector": ".detector",
    "inference_model": ".detector",
    "ImageDetector": ".protocol",
    "Prepared": ".protocol",
    "StagedDetector": ".protocol",
    "SlicedDetector": ".sliced",
    "TTADetector": ".tta",
    "weighted_box_fusion": ".tta",
}
__getattr__, __dir__ = lazy_attributes(__name__, globals(), _LAZY)

__all__ = [
    "Detector",
    "ImageDetector",
    "Prepared",
    "SlicedDetector",
    "StagedDetector",
    "TTADetector",
    "inference_model",
    "weighted_box_fusion",
]
