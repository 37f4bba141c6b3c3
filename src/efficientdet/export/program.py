"""TorchScript and ``torch.export`` programs of the network (native per-level outputs).

Both keep ``EfficientDet.forward``'s interface: images [N, 3, H, W] -> (class_outputs,
box_outputs), lists over levels of [N, A*K, H_l, W_l] and [N, A*4, H_l, W_l], so
``efficientdet.inference.postprocess`` applies unchanged. The input size is fixed at export (H, W
multiples of 32; the TF "same" padding and the upsampling sizes are baked in).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ..fs import atomic_path
from .tracing import ExportError, image_size_for, inference_copy

__all__ = ["export_program", "export_torchscript"]


def _example(model: nn.Module, image_size: int | tuple[int, int] | None, batch_size: int) -> torch.Tensor:
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError("the model has no config; build it with efficientdet.create_model")
    return torch.randn(batch_size, 3, *image_size_for(model, config, image_size))


def _check_outputs(out: object, source: str) -> None:
    ok = isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(o, (tuple, list)) and o for o in out)
    if not ok:
        raise ExportError(f"{source}: the loaded program returned {type(out).__name__}, not (class_outputs, box_outputs)")


def export_torchscript(
    model: nn.Module,
    path: str | os.PathLike[str],
    image_size: int | tuple[int, int] | None = None,
    batch_size: int = 1,
    fuse: bool = True,
) -> Path:
    """Trace the (BN-folded) eval model with ``torch.jit.trace`` and save it to ``path``.

    Tracing, not scripting: timm backbones are not scriptable. The batch dimension stays
    dynamic (no op depends on it). Validated by ``torch.jit.load`` and one run; returns the path.
    """
    example = _example(model, image_size, batch_size)
    net = inference_copy(model, fuse)
    path = Path(path)
    with warnings.catch_warnings(), atomic_path(path) as tmp:
        # The shape checks in forward are Python bools on fixed sizes: expected, harmless.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        with torch.no_grad():
            # check_trace re-traces and compares: we validate the saved file below instead.
            traced = torch.jit.trace(net, example, strict=False, check_trace=False)
        # validated from the temp file: a module that fails keeps the previous file at ``path``
        torch.jit.save(traced, os.fspath(tmp))
        try:
            loaded = torch.jit.load(os.fspath(tmp))
            with torch.no_grad():
                out = loaded(example)
        except Exception as err:
            raise ExportError(f"{path}: the saved TorchScript module failed to load or run: {err}") from err
    _check_outputs(out, os.fspath(path))
    return path


def export_program(
    model: nn.Module,
    path: str | os.PathLike[str],
    image_size: int | tuple[int, int] | None = None,
    batch_size: int = 1,
    dynamic_batch: bool = True,
    fuse: bool = True,
) -> Path:
    """``torch.export.export`` the (BN-folded) eval model and ``torch.export.save`` it (``.pt2``).

    Load with ``torch.export.load(path).module()``. With ``dynamic_batch`` the batch dimension
    is symbolic; the example batch is then at least 2 (torch.export specialises a size-1
    dimension to the constant 1). Validated by loading and one run; returns the path.
    """
    example = _example(model, image_size, max(batch_size, 2) if dynamic_batch else batch_size)
    net = inference_copy(model, fuse)
    path = Path(path)
    dynamic_shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    try:
        program = torch.export.export(net, (example,), dynamic_shapes=dynamic_shapes, strict=False)
    except Exception as err:
        raise ExportError(f"torch.export.export failed: {err}") from err
    with atomic_path(path) as tmp:
        # File objects, not the temp name: given a path not ending in .pt2, torch warns
        # "Expect archive file to be a file ending in .pt2" and "Unable to load package".
        with open(tmp, "wb") as f:
            torch.export.save(program, f)
        try:
            with open(tmp, "rb") as f:
                loaded = torch.export.load(f).module()
            with torch.no_grad():
                out = loaded(example[:batch_size])
        except Exception as err:
            raise ExportError(f"{path}: the saved ExportedProgram failed to load or run: {err}") from err
    _check_outputs(out, os.fspath(path))
    return path
