"""Inference export: BN folding, ONNX (optionally with NMS inside), TorchScript, torch.export.

Quick use::

    from efficientdet.export import export, OnnxDetector
    export(model, "d0.onnx", "onnx", include_postprocess=True)
    detector = OnnxDetector("d0.onnx")        # same interface as efficientdet.Detector
    [result] = detector(["photo.jpg"])
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from torch import nn

from .fuse import count_batchnorms, fuse_batchnorm, optimize_for_inference
from .metadata import OnnxMetadata, read_onnx_metadata
from .onnx import ExportError, attach_candidates, attach_postprocess, check_onnx, export_onnx
from .program import export_program, export_torchscript

EXPORT_FORMATS: tuple[str, ...] = ("onnx", "torchscript", "exported-program")

_EXPORTERS: dict[str, Callable[..., Path]] = {
    "onnx": export_onnx,
    "torchscript": export_torchscript,
    "exported-program": export_program,
    "program": export_program,  # short alias
}


def export(model: nn.Module, path: str | os.PathLike[str], format: str, **kwargs: Any) -> Path:
    """Export ``model`` to ``path`` in ``format`` (one of :data:`EXPORT_FORMATS`).

    ``kwargs`` go to :func:`export_onnx`, :func:`export_torchscript` or :func:`export_program`.
    Returns the written path.
    """
    key = format.lower() if isinstance(format, str) else format
    if key not in _EXPORTERS:
        raise ValueError(f"unknown export format {format!r}; valid formats: {', '.join(EXPORT_FORMATS)}")
    return _EXPORTERS[key](model, path, **kwargs)


def __getattr__(name: str) -> Any:
    # OnnxDetector imports onnxruntime: only when asked for, so exporting needs just onnx.
    if name == "OnnxDetector":
        from .runtime import OnnxDetector

        return OnnxDetector
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "EXPORT_FORMATS",
    "ExportError",
    "OnnxDetector",
    "OnnxMetadata",
    "attach_candidates",
    "attach_postprocess",
    "check_onnx",
    "count_batchnorms",
    "export",
    "export_onnx",
    "export_program",
    "export_torchscript",
    "fuse_batchnorm",
    "optimize_for_inference",
    "read_onnx_metadata",
]
