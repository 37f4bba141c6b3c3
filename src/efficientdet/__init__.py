"""EfficientDet object detectors (D0-D7x, Lite0-Lite4), weight-compatible with the official
TF-ported COCO weights.

Quick use::

    import efficientdet
    model = efficientdet.create_model("efficientdet_d0", weights="efficientdet_d0.coco")
    detector = efficientdet.Detector(model)
    [result] = detector(["photo.jpg"])   # boxes [M, 4] xyxy, scores [M], labels [M], names
"""

from typing import TYPE_CHECKING

from efficientdet.lazy import lazy_attributes

from .config import (
    AnchorConfig,
    BackboneConfig,
    FeatureNetConfig,
    HeadConfig,
    ModelConfig,
    PostprocessConfig,
    PreprocessConfig,
)
from .variants import compound_scaling, get_config, list_models

if TYPE_CHECKING:
    from efficientdet.inference.detector import Detector

    from .factory import create_model, save_model
    from .models.efficientdet import EfficientDet, build_model

__version__ = "0.1.0"

# The torch-backed names are imported on first use (PEP 562): ``import efficientdet`` and the
# command line's parser (``efficientdet --help``) then start in a fraction of a second instead
# of waiting for torch and torchvision (~7 s on a small CPU).
_LAZY = {
    "Detector": ".inference.detector",
    "create_model": ".factory",
    "save_model": ".factory",
    "EfficientDet": ".models.efficientdet",
    "build_model": ".models.efficientdet",
}
__getattr__, __dir__ = lazy_attributes(__name__, globals(), _LAZY)

__all__ = [
    "AnchorConfig",
    "BackboneConfig",
    "Detector",
    "EfficientDet",
    "FeatureNetConfig",
    "HeadConfig",
    "ModelConfig",
    "PostprocessConfig",
    "PreprocessConfig",
    "build_model",
    "compound_scaling",
    "create_model",
    "get_config",
    "list_models",
    "save_model",
]
