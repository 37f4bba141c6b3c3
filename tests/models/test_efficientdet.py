"""The network: topologies as data, fusion modes, output layout, other backbones, sizes."""

from __future__ import annotations

import pytest
import torch

from efficientdet import create_model
from efficientdet.models.bifpn import (
    FusionNode,
    FusionNodeSpec,
    bifpn_topology,
    fpn_topology,
    output_indices,
    panet_topology,
)

torch.set_num_threads(2)


def test_bifpn_topology_p3_p7_is_the_official_node_list() -> None:
    nodes = [(n.level, n.inputs) for n in bifpn_topology(3, 7)]
    assert nodes == [
        (6, (3, 4)), (5, (2, 5)), (4, (1, 6)), (3, (0, 7)),
        (4, (1, 7, 8)), (5, (2, 6, 9)), (6, (3, 5, 10)), (7, (4, 11)),
    ]  # fmt: skip
    assert output_indices(bifpn_topology(3, 7), 3, 7) == [8, 9, 10, 11, 12]  # node k is 5 + k


def test_bifpn_topology_p3_p8() -> None:
    nodes = bifpn_topology(3, 8)
    assert len(nodes) == 10
    assert nodes[0] == FusionNodeSpec(7, (4, 5)) and nodes[4] == FusionNodeSpec(3, (0, 9))
    assert nodes[-1] == FusionNodeSpec(8, (5, 14))  # P8 <- [P8 input, P7 bottom-up]


def test_fpn_and_panet_topologies() -> None:
    assert [(n.level, n.inputs) for n in fpn_topology(3, 5)] == [(4, (1, 2)), (3, (0, 3))]
    assert output_indices(fpn_topology(3, 5), 3, 5) == [4, 3, 2]  # P5 passes through
    pan = panet_topology(3, 5)
    assert [(n.level, n.inputs) for n in pan] == [(4, (1, 2)), (3, (0, 3)), (4, (3, 4)), (5, (2, 5))]


def _small(**overrides):
    return create_model("efficientdet_d0", num_classes=3, **overrides).eval()


def test_output_layout_same_in_train_and_eval() -> None:
    model = _small()
    x = torch.randn(2, 3, 256, 384)
    with torch.no_grad():
        cls, box = model(x)
        model.train()
        cls_t, box_t = model(x)
    assert [tuple(t.shape) for t in cls] == [(2, 27, 256 // s, 384 // s) for s in (8, 16, 32, 64, 128)]
    assert [tuple(t.shape) for t in box] == [(2, 36, 256 // s, 384 // s) for s in (8, 16, 32, 64, 128)]
    assert [t.shape for t in cls_t] == [t.shape for t in cls] and [t.shape for t in box_t] == [t.shape for t in box]


@pytest.mark.parametrize(
    "topology,fusion",
    [("bifpn", f) for f in ("fast_normalized", "softmax", "unbounded", "sum")] + [("fpn", "sum"), ("panet", "softmax")],
)
def test_topologies_and_fusion_modes_run(topology: str, fusion: str) -> None:
    model = _small(**{"feature_net.topology": topology, "feature_net.fusion": fusion})
    has_weights = any(n.endswith(".weight") and p.dim() == 1 and "nodes" in n and ".bn." not in n
                      for n, p in model.named_parameters())  # fmt: skip
    assert has_weights == (fusion != "sum")
    with torch.no_grad():
        cls, box = model(torch.randn(1, 3, 128, 128))
    assert len(cls) == len(box) == 5 and all(torch.isfinite(t).all() for t in cls + box)


@pytest.mark.parametrize(
    "fusion,expected",
    [
        ("fast_normalized", [0.0, 1.0 / (1.0 + 3.0 + 1e-4), 3.0 / (1.0 + 3.0 + 1e-4)]),  # relu, then normalise
        ("softmax", torch.softmax(torch.tensor([-1.0, 1.0, 3.0]), 0).tolist()),
        ("unbounded", [-1.0, 1.0, 3.0]),
    ],
)
def test_fusion_weights_by_hand(fusion: str, expected: list[float]) -> None:
    spec = FusionNodeSpec(4, (0, 1, 2))
    node = FusionNode(spec, [8, 8, 8], [4, 3, 4], 8, fusion, "silu").eval()
    with torch.no_grad():
        node.weight.copy_(torch.tensor([-1.0, 1.0, 3.0]))
        assert torch.allclose(node._fusion_weights(), torch.tensor(expected), atol=1e-6)
        # the fused map is the weighted sum of the resampled inputs (P3 input max-pooled to P4)
        a, b, c = torch.randn(1, 8, 4, 4), torch.randn(1, 8, 8, 8), torch.randn(1, 8, 4, 4)
        node.conv = torch.nn.Identity()
        node.act = torch.nn.Identity()
        pooled = torch.nn.functional.max_pool2d(torch.nn.functional.pad(b, (0, 1, 0, 1), value=-1e9), 3, 2)
        w = torch.tensor(expected)
        assert torch.allclose(node([a, b, c]), w[0] * a + w[1] * pooled + w[2] * c, atol=1e-5)


def test_sum_fusion_has_no_weights() -> None:
    node = FusionNode(FusionNodeSpec(4, (0, 1)), [8, 8], [4, 4], 8, "sum", "relu6")
    assert node.weight is None and node._fusion_weights() is None


def test_any_timm_backbone_by_name() -> None:
    model = _small(**{"backbone.name": "resnet18", "backbone.drop_path_rate": 0.0})
    assert model.backbone.feature_info.reduction() == [8, 16, 32]
    with torch.no_grad():
        cls, _ = model(torch.randn(1, 3, 128, 192))
    assert cls[0].shape == (1, 27, 16, 24)


def test_input_size_must_be_multiple_of_32() -> None:
    with pytest.raises(ValueError, match="multiples of 32"):
        _small()(torch.randn(1, 3, 100, 128))


def test_native_lite0_size_not_multiple_of_128() -> None:
    model = create_model("efficientdet_lite0").eval()
    with torch.no_grad():
        cls, _ = model(torch.randn(1, 3, 320, 320))
    assert [t.shape[-1] for t in cls] == [40, 20, 10, 5, 3]


def test_backbone_download_failure_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # Offline, timm's hub download raises an OSError (huggingface_hub's LocalEntryNotFoundError
    # is one); the user gets a RuntimeError saying what to do, which the CLI prints as one line.
    import timm

    from efficientdet.models import backbone

    def offline(*args: object, pretrained: bool = False, **kwargs: object) -> None:
        assert pretrained
        raise FileNotFoundError("An error happened while trying to locate the file on the Hub\nmore lines")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(RuntimeError, match=r"tf_efficientnet_b0.*FileNotFoundError: An error happened.*Hub\)\. This needs internet.*efficientdet_lite0"):
        backbone.create_backbone("tf_efficientnet_b0", pretrained=True)
