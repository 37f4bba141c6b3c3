"""The table of named EfficientDet variants and the paper's compound-scaling formulas.

The table is explicit on purpose: the official configuration departs from the paper's formulas
(hand-picked BiFPN widths, D5-D7 depth and resolution, D7 re-using the B6 backbone, "sum"
fusion from D6 up), and weight compatibility needs the official numbers, not the formula's.
"""

from __future__ import annotations

import math

from .config import (
    AnchorConfig,
    BackboneConfig,
    FeatureNetConfig,
    HeadConfig,
    ModelConfig,
    PreprocessConfig,
)

_IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
_IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
# The official Lite models normalise with (x - 127) / 128 (automl "mean_rgb"/"stddev_rgb").
_LITE_MEAN = (127.0, 127.0, 127.0)
_LITE_STD = (128.0, 128.0, 128.0)


def _variant(
    name: str,
    *,
    backbone: str,
    size: int,
    channels: int,
    repeats: int,
    head_repeats: int,
    fusion: str,
    anchor_scale: float,
    max_level: int = 7,
    lite: bool = False,
    drop_path_rate: float = 0.2,
) -> ModelConfig:
    activation = "relu6" if lite else "silu"
    return ModelConfig(
        name=name,
        backbone=BackboneConfig(name=backbone, drop_path_rate=drop_path_rate),
        feature_net=FeatureNetConfig(
            min_level=3,
            max_level=max_level,
            channels=channels,
            repeats=repeats,
            topology="bifpn",
            fusion=fusion,  # type: ignore[arg-type]
            activation=activation,  # type: ignore[arg-type]
        ),
        head=HeadConfig(num_classes=90, repeats=head_repeats),
        anchors=AnchorConfig(min_level=3, max_level=max_level, anchor_scale=anchor_scale),
        preprocess=PreprocessConfig(
            image_size=(size, size),
            mean=_LITE_MEAN if lite else _IMAGENET_MEAN,
            std=_LITE_STD if lite else _IMAGENET_STD,
        ),
    )


_FN = "fast_normalized"

# (name, backbone, input, W_bifpn, D_bifpn, D_head, fusion, anchor_scale) -- the official table.
MODEL_TABLE: dict[str, ModelConfig] = {
    cfg.name: cfg
    for cfg in (
        _variant("efficientdet_d0", backbone="tf_efficientnet_b0", size=512, channels=64, repeats=3, head_repeats=3, fusion=_FN, anchor_scale=4.0),
        _variant("efficientdet_d1", backbone="tf_efficientnet_b1", size=640, channels=88, repeats=4, head_repeats=3, fusion=_FN, anchor_scale=4.0),
        _variant("efficientdet_d2", backbone="tf_efficientnet_b2", size=768, channels=112, repeats=5, head_repeats=3, fusion=_FN, anchor_scale=4.0),
        _variant("efficientdet_d3", backbone="tf_efficientnet_b3", size=896, channels=160, repeats=6, head_repeats=4, fusion=_FN, anchor_scale=4.0),
        _variant("efficientdet_d4", backbone="tf_efficientnet_b4", size=1024, channels=224, repeats=7, head_repeats=4, fusion=_FN, anchor_scale=4.0),
        _variant("efficientdet_d5", backbone="tf_efficientnet_b5", size=1280, channels=288, repeats=7, head_repeats=4, fusion=_FN, anchor_scale=4.0),
        _variant("efficientdet_d6", backbone="tf_efficientnet_b6", size=1280, channels=384, repeats=8, head_repeats=5, fusion="sum", anchor_scale=4.0),
        _variant("efficientdet_d7", backbone="tf_efficientnet_b6", size=1536, channels=384, repeats=8, head_repeats=5, fusion="sum", anchor_scale=5.0),
        _variant("efficientdet_d7x", backbone="tf_efficientnet_b7", size=1536, channels=384, repeats=8, head_repeats=5, fusion="sum", anchor_scale=4.0, max_level=8),
        _variant("efficientdet_lite0", backbone="tf_efficientnet_lite0", size=320, channels=64, repeats=3, head_repeats=3, fusion="sum", anchor_scale=3.0, lite=True, drop_path_rate=0.0),
        _variant("efficientdet_lite1", backbone="tf_efficientnet_lite1", size=384, channels=88, repeats=4, head_repeats=3, fusion="sum", anchor_scale=3.0, lite=True),
        _variant("efficientdet_lite2", backbone="tf_efficientnet_lite2", size=448, channels=112, repeats=5, head_repeats=3, fusion="sum", anchor_scale=3.0, lite=True),
        _variant("efficientdet_lite3", backbone="tf_efficientnet_lite3", size=512, channels=160, repeats=6, head_repeats=4, fusion="sum", anchor_scale=4.0, lite=True),
        _variant("efficientdet_lite3x", backbone="tf_efficientnet_lite3", size=640, channels=200, repeats=6, head_repeats=4, fusion="sum", anchor_scale=3.0, lite=True),
        _variant("efficientdet_lite4", backbone="tf_efficientnet_lite4", size=640, channels=224, repeats=7, head_repeats=4, fusion="sum", anchor_scale=4.0, lite=True),
    )
}


def list_models() -> list[str]:
    """Names accepted by ``create_model`` / ``get_config``."""
    return list(MODEL_TABLE)


def get_config(name: str) -> ModelConfig:
    """The official configuration of a named variant (``efficientdet_d0`` ...)."""
    if not isinstance(name, str):  # create_model(compound_scaling(1)) was "'ModelConfig' object has no attribute 'lower'"
        hint = "; efficientdet.build_model(config) builds a model from a ModelConfig" if isinstance(name, ModelConfig) else ""
        raise TypeError(f"a model name is a str such as 'efficientdet_d0', not a {type(name).__name__}{hint}")
    key = name.lower().replace("-", "_")
    if key.startswith("tf_"):  # accept effdet's names too
        key = key[3:]
    if key not in MODEL_TABLE:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_TABLE)}")
    return MODEL_TABLE[key]


def compound_scaling(phi: int, backbone_prefix: str = "tf_efficientnet_b") -> ModelConfig:
    """Build a config from the paper's compound-scaling formulas (paper section 4.2).

    W_bifpn = 64 * 1.35^phi (rounded to a multiple of 8 for hardware-friendly widths),
    D_bifpn = 3 + phi, D_head = 3 + floor(phi / 3), R_input = 512 + 128 * phi, backbone B_phi.

    Departures of the official table (``MODEL_TABLE``), which this function does not apply:
    widths are hand-picked (D2 112 not 120, D4 224 not 216, D7 384 not 520); BiFPN depth is
    capped (D5 7 not 8, D6 8 not 9, D7 8 not 10); resolution D5 1280 not 1152 and D7 1536 not
    1408; D7 re-uses B6 (there is no B7-based D7; D7x uses B7 with a P8 level); D6 and up use
    plain "sum" fusion; D7 uses anchor scale 5.
    """
    if isinstance(phi, bool) or not isinstance(phi, int) or phi < 0:  # 2.5 gave image_size (832.0, 832.0)
        raise ValueError(f"phi must be an integer >= 0, got {phi!r}")
    width = round(64 * 1.35**phi / 8.0) * 8
    size = 512 + 128 * phi
    return _variant(
        f"efficientdet_phi{phi}",
        backbone=f"{backbone_prefix}{phi}",
        size=size,
        channels=width,
        repeats=3 + phi,
        head_repeats=3 + math.floor(phi / 3),
        fusion=_FN,
        anchor_scale=4.0,
    )
