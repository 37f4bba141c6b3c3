"""The named variants match the official table: parameters, FLOPs, configuration."""

from __future__ import annotations

import pytest
import torch

from efficientdet import compound_scaling, get_config, list_models
from efficientdet.models.efficientdet import build_model
from efficientdet.models.flops import count_macs

# Reference table (../shared/reference/efficientdet.md): params (M, printed precision), FLOPs (B).
REFERENCE = {
    "efficientdet_d0": ("3.88", 2.54),
    "efficientdet_d1": ("6.63", 6.10),
    "efficientdet_d2": ("8.10", 11.0),
    "efficientdet_d3": ("12.0", 24.9),
    "efficientdet_d4": ("20.7", 55.2),
    "efficientdet_d5": ("33.7", 130.0),
    "efficientdet_d6": ("51.9", 226.0),
    "efficientdet_d7": ("51.9", 325.0),
    "efficientdet_d7x": ("77.1", 410.0),
    "efficientdet_lite0": ("3.24", None),
    "efficientdet_lite1": ("4.25", None),
    "efficientdet_lite2": ("5.25", None),
    "efficientdet_lite3": ("8.35", None),
    "efficientdet_lite3x": ("9.28", None),
    "efficientdet_lite4": ("15.1", None),
}


def test_table_lists_every_variant() -> None:
    assert list_models() == list(REFERENCE)


@pytest.mark.parametrize("name", list(REFERENCE))
def test_parameter_count_and_flops(name: str) -> None:
    config = get_config(name)
    with torch.device("meta"):  # no memory, no init: instant even for D7x
        model = build_model(config)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    printed, flops = REFERENCE[name]
    decimals = len(printed.split(".")[1])
    assert f"{params:.{decimals}f}" == printed
    if flops is not None:
        macs = count_macs(config) / 1e9
        assert abs(macs / flops - 1) < 0.05, (macs, flops)


def test_official_departures_from_formulas() -> None:
    d7, d7x, d6 = get_config("efficientdet_d7"), get_config("efficientdet_d7x"), get_config("efficientdet_d6")
    assert d7.backbone.name == "tf_efficientnet_b6" and d7.anchors.anchor_scale == 5.0
    assert d7x.feature_net.max_level == 8 and d7x.anchors.max_level == 8 and d7x.backbone.name == "tf_efficientnet_b7"
    assert d6.feature_net.fusion == "sum" and get_config("efficientdet_d5").feature_net.fusion == "fast_normalized"
    lite = get_config("efficientdet_lite0")
    assert lite.feature_net.activation == "relu6" and lite.feature_net.fusion == "sum"
    assert lite.preprocess.mean == (127.0,) * 3 and lite.preprocess.std == (128.0,) * 3
    assert get_config("efficientdet_lite3x").feature_net.channels == 200


def test_effdet_names_accepted_and_unknown_name_lists_valid_ones() -> None:
    assert get_config("tf_efficientdet_d0").name == "efficientdet_d0"
    with pytest.raises(ValueError) as err:
        get_config("efficientdet_d9")
    assert "efficientdet_d0" in str(err.value) and "efficientdet_lite4" in str(err.value)


@pytest.mark.parametrize(
    "phi,width,depth,head,size",
    [(0, 64, 3, 3, 512), (1, 88, 4, 3, 640), (3, 160, 6, 4, 896), (6, 384, 9, 5, 1280), (7, 520, 10, 5, 1408)],
)
def test_compound_scaling_formulas(phi: int, width: int, depth: int, head: int, size: int) -> None:
    cfg = compound_scaling(phi)
    assert cfg.feature_net.channels == width  # 64 * 1.35^phi rounded to a multiple of 8
    assert cfg.feature_net.repeats == depth and cfg.head.repeats == head
    assert cfg.image_size == (size, size) and cfg.backbone.name == f"tf_efficientnet_b{phi}"


def test_config_replace_and_roundtrip() -> None:
    cfg = get_config("efficientdet_d0").replace(num_classes=3, image_size=640, **{"feature_net.fusion": "softmax"})
    assert cfg.num_classes == 3 and cfg.image_size == (640, 640) and cfg.feature_net.fusion == "softmax"
    assert type(cfg).from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown field"):
        cfg.replace(**{"feature_net.width": 3})


@pytest.mark.parametrize("phi", [-1, 2.5, True])
def test_compound_scaling_takes_a_whole_phi(phi: object) -> None:
    # 2.5 built a config with image_size (832.0, 832.0) and a 'tf_efficientnet_b2.5' backbone
    with pytest.raises(ValueError, match=r"phi must be an integer >= 0, got "):
        compound_scaling(phi)  # type: ignore[arg-type]
    assert compound_scaling(2).image_size == (768, 768)


def test_a_config_given_as_the_name_says_how_to_build_it() -> None:
    """usage.md's compound_scaling(phi) returns a ModelConfig; create_model(config) failed with
    "'ModelConfig' object has no attribute 'lower'"."""
    from efficientdet import create_model

    with pytest.raises(TypeError, match=r"not a ModelConfig; efficientdet.build_model\(config\) builds a model"):
        create_model(compound_scaling(1))
    assert build_model(compound_scaling(1)).config.image_size == (640, 640)
