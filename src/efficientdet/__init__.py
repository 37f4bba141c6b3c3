"""EfficientDet object detectors."""
