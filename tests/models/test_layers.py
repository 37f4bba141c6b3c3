"""Layer rewrites: 1x1 convs as matrix products on channels-last inputs (training on CPUs)."""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn

from efficientdet import create_model
from efficientdet.models.layers import PointwiseConv2d, StaticSameConv2d, make_pointwise_convs_matmul


def test_pointwise_conv_equals_the_conv_forward_and_backward() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, 1)
    fast = PointwiseConv2d(6, 5, 1)
    fast.load_state_dict(conv.state_dict())
    x = torch.randn(2, 6, 7, 9).contiguous(memory_format=torch.channels_last).requires_grad_()
    y_ref, y = conv(x), fast(x)
    assert y.is_contiguous(memory_format=torch.channels_last)  # stays channels-last, no copy
    assert torch.allclose(y, y_ref, atol=1e-6)
    g = torch.randn_like(y_ref)
    ref = torch.autograd.grad(y_ref, [x, conv.weight, conv.bias], g)
    got = torch.autograd.grad(y, [x, fast.weight, fast.bias], g)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ref, got))
    nchw = torch.randn(2, 6, 7, 9)  # other layouts: the usual conv
    assert torch.allclose(fast(nchw), conv(nchw), atol=1e-6)


def test_model_rewrite_keeps_names_values_and_outputs() -> None:
    torch.manual_seed(0)
    model = create_model("efficientdet_lite0", image_size=128, num_classes=3).eval()
    fast = copy.deepcopy(model)
    replaced = make_pointwise_convs_matmul(fast)
    assert replaced == sum(isinstance(m, PointwiseConv2d) for m in fast.modules()) > 50
    # only unpadded 1x1 stride-1 convs; the rest stay
    assert all(m.kernel_size == (1, 1) for m in fast.modules() if isinstance(m, PointwiseConv2d))
    assert any(isinstance(m, StaticSameConv2d) for m in fast.modules())
    assert list(fast.state_dict()) == list(model.state_dict())
    x = torch.randn(2, 3, 128, 128).contiguous(memory_format=torch.channels_last)
    model.to(memory_format=torch.channels_last)
    fast.to(memory_format=torch.channels_last)
    with torch.no_grad():
        for a, b in zip(itertools.chain(*model(x)), itertools.chain(*fast(x))):
            assert torch.allclose(a, b, atol=1e-4)
