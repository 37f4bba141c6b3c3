"""Quantization-aware fine-tuning: training through int8 fake-quantizers so that
``export --int8`` keeps the float model's accuracy.

Post-training quantization rounds weights and activations that the network never saw rounded;
Swish networks with squeeze-excite (EfficientNet-B0 in D0) lose about a point of AP that way
(docs/quantization.md). Here the trained float model is wrapped by NNCF's ``nncf.quantize``
(PyTorch backend): fake-quantizers (round to int8 and back, straight-through gradients,
trainable scales) go where the int8 runtime quantizes, on convolution weights (per output
channel) and inputs, with ranges taken from a few training images by the rule
``export --int8`` uses (:func:`~efficientdet.export.quantize.has_unbounded_activations`:
quantiles for Swish networks, min/max for ReLU6 ones). Training then goes on with the usual
loss, data and schedule, so the weights learn to work rounded. The heads' last layers are
rounded in training too, though ``export --int8`` keeps them float: NNCF names the PyTorch ops
of shared modules by call order, not by the module path that would single them out, and a
layer trained rounded and run float only loses noise.

BatchNorm keeps the float model's running statistics (:func:`freeze_batchnorm_statistics`;
its scale and shift still train). With batch statistics, BN re-normalises the rounded
activations, whose channel means shift a lot in the early layers, and the running statistics
follow them: the saved float weights then no longer describe a float network that
``export --int8`` can calibrate (measured in docs/quantization.md).

Checkpoints (``.safetensors``) hold the float weights only: what adapted are the weights, and
``export --int8`` quantizes them again with the same rule, so every tool reads a
quantization-aware checkpoint like any other. ``.ckpt`` files keep the quantizers' state for
resuming.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch
from torch import Tensor, nn

from ..data.images import load_image
from ..data.records import DatasetIndex
from ..inference.preprocess import preprocess_batch

__all__ = [
    "calibration_inputs", "float_state_dict", "freeze_batchnorm_statistics", "is_quantization_aware",
    "wrap_quantization_aware",
]  # fmt: skip

# Where NNCF keeps the quantizers of a wrapped model (state-dict keys start with it).
_HOOKS_PREFIX = "__nncf_hooks"

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def calibration_inputs(index: DatasetIndex, preprocess: object, count: int) -> list[Tensor]:
    """``count`` images spread evenly over ``index``, each preprocessed as inference does:
    a list of [1, 3, H, W] float32 tensors (the ranges the quantizers start from)."""
    if count < 1:
        raise ValueError(f"quantization_calibration_images must be >= 1, got {count}")
    records = index.records
    if not records:
        raise ValueError("quantization-aware training: no training images to calibrate on")
    step = max(1, len(records) // count)
    picked = records[::step][:count]
    return [preprocess_batch([load_image(r.image_path)], preprocess)[0] for r in picked]  # type: ignore[arg-type]


def wrap_quantization_aware(model: ModuleT, inputs: Sequence[Tensor], reduce_range: bool) -> ModuleT:
    """``model`` with NNCF fake-quantizers, their ranges observed on ``inputs``
    (from :func:`calibration_inputs`); returns the wrapped model (same class and attributes).

    ``reduce_range``: 7-bit weights, as ``export --int8`` uses on CPUs without VNNI. The model
    must hold plain modules (no CPU training rewrites: NNCF places quantizers on the convs it
    sees). Leaves ``model`` in training mode.
    """
    from ..export.quantize import has_unbounded_activations, require_nncf

    require_nncf()
    import logging

    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    if not inputs:
        raise ValueError("quantization-aware training: no calibration images")
    nncf.set_log_level(logging.ERROR)
    # No bias correction: it would shift the float biases towards the rounded network's, and
    # ``export --int8`` corrects the biases of the file it writes itself.
    advanced = AdvancedQuantizationParameters(
        overflow_fix=OverflowFix.ENABLE if reduce_range else OverflowFix.DISABLE, disable_bias_correction=True
    )
    if has_unbounded_activations(model):
        advanced.activations_range_estimator_params = RangeEstimatorParametersSet.MEAN_QUANTILE
    model.eval()  # ranges of BN's running statistics, not of a calibration batch
    device = next(model.parameters()).device
    with torch.no_grad():
        wrapped = nncf.quantize(
            model,
            nncf.Dataset([x.to(device) for x in inputs]),
            subset_size=len(inputs),
            advanced_parameters=advanced,
        )
    wrapped.train()
    return wrapped  # type: ignore[no-any-return]


def freeze_batchnorm_statistics(model: nn.Module) -> int:
    """Put every BatchNorm of ``model`` in eval mode (running statistics used and kept; its
    weight and bias still train). Call after each ``model.train()``; returns how many."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.eval()
    return len(norms)


def is_quantization_aware(model: nn.Module) -> bool:
    """Whether ``model`` carries fake-quantizers from :func:`wrap_quantization_aware`."""
    return any(key.startswith(_HOOKS_PREFIX) for key in model.state_dict())


def float_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The float weights of ``model`` (a wrapped one's quantizers dropped): the state dict of
    the plain network, loadable by ``create_model``."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith(_HOOKS_PREFIX)}
