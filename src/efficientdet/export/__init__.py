"""Inference export: BN folding, ONNX (optionally with NMS inside), TorchScript, torch.export.

Quick use::

    from efficientdet.export import export, OnnxDetector
    export(model, "d0.onnx", "onnx", include_postprocess=True)
    detector = OnnxDetector("d0.onnx")        # same interface as efficientdet.Detector
    [result] = detector(["photo.jpg"])
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from efficientdet.lazy import lazy_attributes

if TYPE_CHECKING:
    from torch import nn

    from efficientdet.models.fuse import count_batchnorms, fuse_batchnorm, optimize_for_inference

    from .metadata import OnnxMetadata, read_onnx_metadata
    from .onnx import ExportError, attach_candidates, attach_postprocess, check_onnx, export_onnx
    from .openvino import OpenVinoDetector
    from .program import export_program, export_torchscript
    from .runtime import OnnxDetector

EXPORT_FORMATS: tuple[str, ...] = ("onnx", "torchscript", "exported-program")

# Format -> exporter (one of this package's lazily imported names below); "program" is a
# short alias of "exported-program".
_EXPORTERS: dict[str, str] = {
    "onnx": "export_onnx",
    "torchscript": "export_torchscript",
    "exported-program": "export_program",
    "program": "export_program",
}


def check_output_path(path: str | os.PathLike[str], format: str) -> None:
    """Refuse an output name that the program would later read as the wrong kind of file:
    ``predict``, ``eval``, ``serve`` and ``info`` know an ONNX graph by its ``.onnx`` name
    alone (:func:`~efficientdet.export.metadata.is_graph_file`), so an ONNX graph under another
    name was taken for weights, and a TorchScript or torch.export file named ``.onnx`` for a
    broken graph."""
    name = os.fspath(path)
    is_onnx_name = name.lower().endswith(".onnx")
    if format.lower() == "onnx" and not is_onnx_name:
        raise ValueError(f"{name}: an ONNX graph must be named *.onnx (predict, eval, serve and info recognise "
                         f"it by that name), e.g. {Path(name).with_suffix('.onnx')}")  # fmt: skip
    if format.lower() != "onnx" and is_onnx_name:
        suffix = ".pt" if format.lower() == "torchscript" else ".pt2"
        raise ValueError(f"{name}: a .onnx name is for --format onnx; a {format} file would be taken for a broken "
                         f"ONNX graph: name it e.g. {Path(name).with_suffix(suffix)}")  # fmt: skip


def export(model: nn.Module, path: str | os.PathLike[str], format: str, **kwargs: Any) -> Path:
    """Export ``model`` to ``path`` in ``format`` (one of :data:`EXPORT_FORMATS`).

    ``kwargs`` go to :func:`export_onnx`, :func:`export_torchscript` or :func:`export_program`.
    Returns the written path.
    """
    key = format.lower() if isinstance(format, str) else format
    if key not in _EXPORTERS:
        raise ValueError(f"unknown export format {format!r}; valid formats: {', '.join(EXPORT_FORMATS)}")
    if Path(path).is_dir():  # else found only by the final rename, after the whole export
        raise ValueError(f"{path}: is a folder; give the file to write")
    check_output_path(path, key)
    exporter = getattr(sys.modules[__name__], _EXPORTERS[key])  # imports its module on first use
    return exporter(model, path, **kwargs)


# Imported on first use (PEP 562): the CLI's parser needs EXPORT_FORMATS without torch, and
# OnnxDetector imports onnxruntime, so exporting needs just onnx.
_LAZY = {
    "count_batchnorms": "efficientdet.models.fuse",
    "fuse_batchnorm": "efficientdet.models.fuse",
    "optimize_for_inference": "efficientdet.models.fuse",
    "OnnxMetadata": ".metadata",
    "read_onnx_metadata": ".metadata",
    "ExportError": ".onnx",
    "attach_candidates": ".onnx",
    "attach_postprocess": ".onnx",
    "check_onnx": ".onnx",
    "export_onnx": ".onnx",
    "export_program": ".program",
    "export_torchscript": ".program",
    "OnnxDetector": ".runtime",
    "OpenVinoDetector": ".openvino",
    "cached_onnx": ".cache",
    "onnx_providers": ".cache",
}
__getattr__, __dir__ = lazy_attributes(__name__, globals(), _LAZY)


__all__ = [
    "EXPORT_FORMATS",
    "ExportError",
    "OnnxDetector",
    "OnnxMetadata",
    "OpenVinoDetector",
    "attach_candidates",
    "attach_postprocess",
    "check_onnx",
    "check_output_path",
    "count_batchnorms",
    "export",
    "export_onnx",
    "export_program",
    "export_torchscript",
    "fuse_batchnorm",
    "optimize_for_inference",
    "read_onnx_metadata",
]
