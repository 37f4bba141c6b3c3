"""Weights of another variant than the one named: an error naming both (``weights/identify.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import safetensors.torch
import torch

from efficientdet import create_model
from efficientdet.models.efficientdet import build_model
from efficientdet.variants import get_config
from efficientdet.weights.convert import effdet_to_native
from efficientdet.weights.identify import identify_variants, signature_of
from efficientdet.weights.io import WeightsError


@pytest.fixture(scope="module")
def effdet_d1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised effdet tf_efficientdet_d1 saved as a plain state dict (.pth)."""
    effdet = pytest.importorskip("effdet")
    torch.manual_seed(0)
    ref = effdet.EfficientDet(effdet.get_efficientdet_config("tf_efficientdet_d1"), pretrained_backbone=False)
    path = tmp_path_factory.mktemp("effdet") / "d1.pth"
    torch.save(ref.state_dict(), path)
    return path


def _native(name: str, tmp: Path, suffix: str) -> Path:
    """Our own ``build_model(name)`` weights without config metadata (.safetensors or .pth)."""
    torch.manual_seed(0)
    state = build_model(get_config(name)).state_dict()
    path = tmp / f"{name}{suffix}"
    if suffix == ".safetensors":
        safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, str(path))  # no metadata
    else:
        torch.save(state, path)
    return path


def test_effdet_d1_loaded_as_d0_names_both(effdet_d1: Path) -> None:
    with pytest.raises(WeightsError) as info:
        create_model("efficientdet_d0", weights=effdet_d1)
    msg = str(info.value)
    assert msg.startswith(f"{effdet_d1}: these weights are for efficientdet_d1 ")
    assert "BiFPN 88 channels, 4 cells" in msg and msg.count("not efficientdet_d0") == 1
    # The right name loads, with every tensor.
    model = create_model("efficientdet_d1", weights=effdet_d1)
    sd = effdet_to_native(torch.load(effdet_d1, weights_only=True))
    key = "feature_net.cells.3.nodes.7.conv.pw.weight"
    assert torch.equal(model.state_dict()[key], sd[key])


@pytest.mark.parametrize(("name", "suffix", "facts"), [
    ("efficientdet_lite0", ".safetensors", "BiFPN 64 channels, 3 cells, 5 levels, 3 head convs, sum fusion"),
    ("efficientdet_d1", ".pth", "BiFPN 88 channels, 4 cells, 5 levels, 3 head convs, weighted fusion"),
])  # fmt: skip
def test_own_weights_without_config_loaded_as_d0(name: str, suffix: str, facts: str, tmp_path: Path) -> None:
    path = _native(name, tmp_path, suffix)
    with pytest.raises(WeightsError, match=rf"these weights are for {name} \({facts}.*\), not efficientdet_d0"):
        create_model("efficientdet_d0", weights=path)
    model = create_model(name, weights=path)  # the correct name still loads
    assert model.config.name == name


def test_no_known_variant(tmp_path: Path) -> None:
    # D0 with a 5-cell BiFPN: no named variant has that shape.
    torch.manual_seed(0)
    state = build_model(get_config("efficientdet_d0").replace(**{"feature_net.repeats": 5})).state_dict()
    path = tmp_path / "custom.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"not any known variant \(BiFPN 64 channels, 5 cells.*\), so they do not fit efficientdet_d0"):
        create_model("efficientdet_d0", weights=path)


def test_identify_and_signature() -> None:
    with torch.device("meta"):
        d0 = build_model(get_config("efficientdet_d0")).state_dict()
        d6 = build_model(get_config("efficientdet_d6")).state_dict()
    assert identify_variants(d0) == ["efficientdet_d0"]
    # D6 and D7 differ only in input size and anchor scale: the weights cannot tell them apart.
    assert identify_variants(d6) == ["efficientdet_d6", "efficientdet_d7"]
    sig = signature_of(d0)
    assert sig is not None and (sig.channels, sig.cells, sig.nodes, sig.head_repeats) == (64, 3, 8, 3)
    assert sig.weighted_fusion and sig.stem_channels == 32
    assert signature_of({"backbone.conv_stem.weight": torch.zeros(32, 3, 3, 3)}) is None
