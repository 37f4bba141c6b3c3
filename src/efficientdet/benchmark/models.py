"""The benchmarked model and, for comparisons, the reference (effdet) model with the same weights."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import PreprocessConfig
from ..fs import atomic_path
from ..models.efficientdet import EfficientDet

__all__ = ["build_models", "calibrate_batchnorm_"]


def calibrate_batchnorm_(model: nn.Module, images: torch.Tensor, var_floor: float | None = None) -> None:
    """Set every BatchNorm's running statistics to the true statistics of ``model`` on
    ``images`` [B, 3, H, W] (preprocessed: one train-mode pass with ``momentum=None``, i.e. a
    plain average), then eval mode.

    Freshly initialised networks have mean 0 / variance 1 statistics that do not match their
    activations: outputs then drift to constant or saturated scores (logits in the thousands
    on photos when calibrated on white noise), and post-processing gets an unrealistic load.
    Calibrated on the benchmark's own images, every layer normalises its input and the class
    scores sit around the prior (~0.01), as a trained detector's mostly do.

    ``var_floor``: a lower bound for the running variances. Random networks have near-constant
    channels whose normalisation multiplies float32 rounding noise by up to 1/sqrt(eps); parity
    tests between two float32 runtimes floor them so that noise is not what they compare.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        with torch.no_grad():
            model(images)
    finally:
        for m, momentum in zip(bns, saved):
            m.momentum = momentum
            if var_floor is not None and m.running_var is not None:  # None: a BN without running statistics
                m.running_var.clamp_(min=var_floor)
        model.eval()


def _calibration_batch(files: Sequence[Path], preprocess: PreprocessConfig) -> torch.Tensor:
    """Up to two of ``files`` (one and its mirror when there is one), preprocessed for the model -> [2, 3, H, W]."""
    from efficientdet.inference.preprocess import preprocess_batch

    from ..data.images import load_image

    if not files:
        raise ValueError("random weights need at least one image to calibrate BatchNorm statistics on")
    batch = preprocess_batch([load_image(f) for f in files[:2]], preprocess)[0]
    # One image (the README's one-photo benchmark): its mirror is the second sample; batch norm
    # in train mode needs more than one value per channel, and at 128 px the top level is 1x1
    return torch.cat([batch, batch.flip(-1)]) if len(batch) == 1 else batch


def _reference_model(name: str, image_size: tuple[int, int], num_classes: int = 90) -> nn.Module:
    """effdet's ``EfficientDet`` for our variant ``name`` at ``image_size``, random init."""
    from effdet.config import get_efficientdet_config
    from effdet.efficientdet import EfficientDet as RefEfficientDet

    try:
        cfg = get_efficientdet_config("tf_" + name)
    except KeyError:
        raise ValueError(f"effdet has no model 'tf_{name}' to compare {name!r} with") from None
    cfg.image_size = tuple(image_size)  # effdet fixes its resampling sizes at build time
    cfg.num_classes = num_classes
    return RefEfficientDet(cfg, pretrained_backbone=False).eval()


def build_models(
    name: str,
    image_size: tuple[int, int] | None,
    weights: str | os.PathLike[str] | None,
    compare_effdet: bool,
    workdir: Path,
    calibration: Sequence[Path],
    seed: int = 0,
) -> tuple[EfficientDet, nn.Module | None, str]:
    """-> (our model, effdet's model or None, a description of the weights); all in eval mode.

    Without ``weights`` both get the same random weights: effdet's initialisation (or ours when
    not comparing) with calibrated BatchNorm statistics, converted into our model through an
    effdet state dict file, exactly as a user's effdet checkpoint would be. With ``weights``
    and a comparison, the weights must be in effdet's format (a ``.pth`` it wrote).
    ``calibration``: image files for the BatchNorm statistics of random weights (2 are used).
    """
    from ..factory import create_model
    from ..variants import get_config

    config = get_config(name)
    h, w = image_size or config.image_size
    size = (h, w)
    if h % 32 or w % 32 or min(size) <= 0:
        raise ValueError(f"image size {h}x{w}: sides must be positive multiples of 32")
    overrides: dict[str, Any] = {"image_size": size} if image_size is not None else {}
    torch.manual_seed(seed)
    reference = None
    if weights is None:
        images = _calibration_batch(calibration, config.replace(**overrides).preprocess)
        if compare_effdet:
            reference = _reference_model(config.name, size)
            calibrate_batchnorm_(reference, images)
            path = workdir / f"{config.name}.effdet.pth"
            with atomic_path(path) as tmp:
                torch.save(reference.state_dict(), tmp)
            ours = create_model(config.name, weights=path, **overrides)
            described = "random (effdet init, BN statistics calibrated on the images), converted into ours"
        else:
            ours = create_model(config.name, **overrides)
            calibrate_batchnorm_(ours, images)
            described = "random (our init, BN statistics calibrated on the images)"
        return ours.eval(), reference, described

    ours = create_model(config.name, weights=weights, **overrides).eval()
    described = os.fspath(weights)
    if compare_effdet:
        from ..weights.convert import is_effdet_state_dict
        from ..weights.io import read_weights
        from ..weights.registry import resolve_weights

        state_dict, _ = read_weights(resolve_weights(weights)[0])
        if not is_effdet_state_dict(state_dict):
            raise ValueError(
                f"--compare-effdet with --weights {weights}: effdet can only load its own checkpoint "
                "format (an effdet .pth); pass such a file, or no --weights for random weights"
            )
        assert ours.config is not None  # create_model sets it
        reference = _reference_model(config.name, size, ours.config.num_classes)
        reference.load_state_dict(state_dict)
        reference.eval()
    return ours, reference, described

