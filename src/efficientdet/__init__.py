"""EfficientDet object detectors (D0-D7x, Lite0-Lite4), weight-compatible with the official
TF-ported COCO weights.

Quick use::

    import efficientdet
    model = efficientdet.create_model("efficientdet_d0", weights="efficientdet_d0.coco")
    detector = efficientdet.Detector(model)
    [result] = detector(["photo.jpg"])   # boxes [M, 4] xyxy, scores [M], labels [M], names
"""

from .config import (
    AnchorConfig,
    BackboneConfig,
    FeatureNetConfig,
    HeadConfig,
    ModelConfig,
    PostprocessConfig,
    PreprocessConfig,
)
from .detector import Detector
from .factory import create_model, save_model
from .models.efficientdet import EfficientDet, build_model
from .variants import compound_scaling, get_config, list_models

__version__ = "0.1.0"

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
