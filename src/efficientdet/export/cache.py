"""The ONNX graph ``--backend onnxruntime`` runs, exported once per model and kept in a cache,
and the ONNX Runtime execution providers for a device.

``predict``, ``eval``, the benchmark and the server all get their graph here, so they run the
same one: no NMS inside (so ``--score-threshold`` and ``--nms soft`` apply exactly as with
torch) and the candidate pre-selection inside (the top anchors by class logit: exact, and ~10x
less for Python to read).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # the model (and timm) load only when a checkpoint is exported, not to run a graph
    from ..models.efficientdet import EfficientDet

__all__ = ["INSTALL_HINT", "cached_onnx", "onnx_providers", "quiet_onnxruntime", "require_onnx_export", "require_onnxruntime"]

INSTALL_HINT = "pip install 'efficientdet[export]'"


def _require(modules: tuple[str, ...], who: str) -> None:
    """A RuntimeError naming ``who``, the missing ``modules`` and the install command."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise RuntimeError(f"{who} needs {' and '.join(missing)}, not installed here: {INSTALL_HINT}")


def require_onnxruntime() -> None:
    """A RuntimeError with the install command when onnx or onnxruntime is missing."""
    _require(("onnxruntime", "onnx"), "--backend onnxruntime")


def require_onnx_export(dynamo: bool, who: str = "--format onnx") -> None:
    """A RuntimeError naming ``who`` and the install command when a package an ONNX export uses
    is missing: onnx (the graph), onnxruntime (its check run) and, for the dynamo exporter, onnxscript."""
    _require(("onnx", "onnxruntime", *(("onnxscript",) if dynamo else ())), who)


@contextlib.contextmanager
def quiet_onnxruntime() -> Iterator[None]:
    """ONNX Runtime's warnings off for a block: ``quantize_static`` printed one per unused
    initializer of its calibration session (over a hundred lines for Lite0) and a root-logger
    "Please consider to run pre-processing" (the root handler that implied is removed again)."""
    import onnxruntime

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    onnxruntime.set_default_logger_severity(3)  # errors only
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        onnxruntime.set_default_logger_severity(2)  # ONNX Runtime's default: warnings
        root.setLevel(level)
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)


def onnx_providers(device: str | torch.device | None) -> list[Any]:
    """ONNX Runtime execution providers for ``device`` (None: CUDA when both torch and
    onnxruntime can use it, else CPU); a ValueError for a device ONNX Runtime cannot use here."""
    import onnxruntime as ort

    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if device is None:
        use_cuda = has_cuda and torch.cuda.is_available()
        return ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]
    dev = torch.device(device)
    if dev.type == "cpu":
        return ["CPUExecutionProvider"]
    if dev.type != "cuda":
        raise ValueError(f"--device {device}: --backend onnxruntime runs on cpu or cuda only")
    if not has_cuda:
        raise ValueError(
            f"--device {device}: this onnxruntime has no CUDA support (providers: "
            f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu or use --device cpu"
        )
    return [("CUDAExecutionProvider", {"device_id": dev.index or 0}), "CPUExecutionProvider"]


def cached_onnx(
    model: EfficientDet,
    cache_dir: str | os.PathLike[str],
    source: str | os.PathLike[str] | None = None,
    dynamo: bool = False,
) -> Path:
    """``model``'s graph (no NMS, candidates inside) in ``cache_dir``, exported on first use.

    The cache key is the model's config and class names, torch's version and, when given, the
    weights file ``source`` (path, size, mtime). Without ``source`` the weights are hashed, so a
    changed in-memory model never reuses a stale graph. The input-size limit is applied at run
    time, so it is not part of the graph. ``dynamo=False`` uses the TorchScript exporter (~10x
    faster to run than dynamo's; dynamo is the fallback when it fails).
    """
    config = model.config
    if config is None:
        raise ValueError("the model has no config; build it with efficientdet.create_model")
    key_doc: dict[str, Any] = {
        "config": config.replace(**{"preprocess.max_input_pixels": 1}).to_dict(),
        "class_names": model.class_names, "torch": torch.__version__, "layout": "candidates", "dynamo": dynamo,
    }  # fmt: skip
    if source is not None:
        stat = Path(source).stat()
        key_doc["file"] = {"path": str(Path(source).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    else:
        digest = hashlib.sha256()
        for tensor in model.state_dict().values():
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        key_doc["weights"] = digest.hexdigest()
    key = hashlib.sha256(json.dumps(key_doc, sort_keys=True, default=str).encode()).hexdigest()[:12]
    h, w = config.image_size
    path = Path(cache_dir) / f"{config.name}-{h}x{w}-{key}.onnx"
    if path.is_file():
        print(f"onnx cache: using the cached graph {path}", file=sys.stderr)
        return path
    print(f"onnx cache: exporting {config.name} ({h}x{w}, no NMS inside) to {path} ...", file=sys.stderr)
    _export(model.eval(), path, dynamo)
    return path


def _export(model: EfficientDet, path: Path, dynamo: bool) -> None:
    from .onnx import export_onnx

    if dynamo:
        export_onnx(model, path, candidates=True, dynamo=True)
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            export_onnx(model, path, candidates=True, dynamo=False)
    except Exception as err:  # deliberately broad: fall back to the default exporter, then report
        print(f"onnx cache: TorchScript exporter failed ({err}); trying dynamo", file=sys.stderr)
        export_onnx(model, path, candidates=True, dynamo=True)
