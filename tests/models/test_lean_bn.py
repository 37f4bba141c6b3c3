"""LeanBatchNormSiLU2d: the same forward, gradients and running statistics as timm's
BatchNormAct2d + SiLU, with fewer saved activations."""

from __future__ import annotations

import copy
import itertools

import torch
from timm.layers import BatchNormAct2d
from torch import nn

from efficientdet import create_model
from efficientdet.models.lean_bn import LeanBatchNormSiLU2d, make_batchnorm_silu_lean


def _pair(momentum: float | None = 0.1) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(3, 6, 3), BatchNormAct2d(6, momentum=momentum, act_layer=nn.SiLU), nn.Conv2d(6, 2, 1))
    with torch.no_grad():
        ref[1].weight.uniform_(0.5, 1.5)
        ref[1].bias.uniform_(-0.5, 0.5)
    lean = copy.deepcopy(ref)
    assert make_batchnorm_silu_lean(lean) == 1 and isinstance(lean[1], LeanBatchNormSiLU2d)
    return ref, lean


def test_same_values_gradients_and_statistics() -> None:
    for momentum in (0.1, None):  # exponential and cumulative running averages
        ref, lean = _pair(momentum)
        x = torch.randn(3, 3, 9, 11).contiguous(memory_format=torch.channels_last)
        for _ in range(2):
            y_ref, y = ref(x), lean(x)
            assert torch.allclose(y, y_ref, atol=1e-6)
            g = torch.randn_like(y)
            grads_ref = torch.autograd.grad(y_ref, list(ref.parameters()), g)
            grads = torch.autograd.grad(y, list(lean.parameters()), g)
            assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads_ref, grads))
        for (name, a), b in zip(ref.state_dict().items(), lean.state_dict().values()):
            assert torch.allclose(a.float(), b.float(), atol=1e-6), name
        assert list(ref.state_dict()) == list(lean.state_dict())
        xg = x.clone().requires_grad_()  # input gradient too
        assert torch.allclose(torch.autograd.grad(ref(xg).sum(), xg)[0], torch.autograd.grad(lean(xg).sum(), xg)[0], atol=1e-5)
        ref.eval(), lean.eval()
        assert torch.allclose(ref(x), lean(x), atol=1e-6)


def test_keeps_fewer_tensors_for_backward() -> None:
    ref, lean = _pair()
    x = torch.randn(2, 3, 32, 32)

    def saved_bytes(model: nn.Module) -> int:
        total = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x).sum()
        return total

    layer = 2 * 6 * 30 * 30 * 4  # one activation of the BN layer
    assert saved_bytes(ref) - saved_bytes(lean) >= layer


def test_efficientdet_backbone_rewrite() -> None:
    torch.manual_seed(0)
    model = create_model("efficientdet_d0", image_size=128, num_classes=3, **{"backbone.drop_path_rate": 0.0}).train()
    lean = copy.deepcopy(model)
    assert make_batchnorm_silu_lean(lean) > 30  # the backbone's BN + SiLU layers
    x = torch.randn(2, 3, 128, 128)
    out_ref, out = model(x), lean(x)
    for a, b in zip(itertools.chain(*out_ref), itertools.chain(*out)):
        assert torch.allclose(a, b, atol=1e-4)
