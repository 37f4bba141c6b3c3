"""Small building blocks: separable convs, 1x1 projections, TF-"same" pooling and padding."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def make_activation(name: str) -> nn.Module:
    """``silu`` (swish), ``relu6`` (Lite models) or ``relu``."""
    if name == "silu":
        return nn.SiLU(inplace=True)
    if name == "relu6":
        return nn.ReLU6(inplace=True)
    if name == "relu":
        return nn.ReLU(inplace=True)
    raise ValueError(f"unknown activation {name!r}; valid: silu, relu6, relu")


class SeparableConv2d(nn.Module):
    """Depthwise 3x3 (no bias) -> pointwise 1x1 (with bias) -> optional BatchNorm.

    Stride 1 with odd kernel: TF "same" padding is symmetric, so static padding is exact.
    Shapes: ``[N, C_in, H, W] -> [N, C_out, H, W]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        bias: bool = True,
        norm: bool = False,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.01,
    ) -> None:
        super().__init__()
        self.dw = nn.Conv2d(
            in_channels, in_channels, kernel_size, padding=kernel_size // 2, groups=in_channels, bias=False
        )
        self.pw = nn.Conv2d(in_channels, out_channels, 1, bias=bias)
        self.bn = nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pw(self.dw(x))
        if self.bn is not None:
            x = self.bn(x)
        return x


class ConvBN(nn.Module):
    """Plain ``k x k`` conv (with bias, as the official weights have) + optional BatchNorm."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        norm: bool = True,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.01,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=True)
        self.bn = nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return x


def _same_pad_1d(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "same" padding (before, after) for one spatial dimension."""
    out = (size + stride - 1) // stride  # ceil division the ONNX exporters translate exactly
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def max_pool_same(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Max-pool with kernel ``stride + 1`` and TF "same" padding: ``[N,C,H,W] -> [N,C,ceil(H/s),ceil(W/s)]``.

    When the sides are multiples of the stride (always so for inputs whose sides are multiples
    of the model's largest stride) the TF padding is (0, 1) with -inf, which equals
    ``ceil_mode=True`` without any padding op. Other sizes pad explicitly with -inf.
    """
    kernel = stride + 1
    h, w = x.shape[-2], x.shape[-1]
    if h % stride == 0 and w % stride == 0:
        return F.max_pool2d(x, kernel, stride, ceil_mode=True)
    top, bottom = _same_pad_1d(h, kernel, stride)
    left, right = _same_pad_1d(w, kernel, stride)
    x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
    return F.max_pool2d(x, kernel, stride)


class StaticSameConv2d(nn.Conv2d):
    """A conv whose TF "same" padding is fixed at build time instead of computed every forward.

    Valid when every input's sides are multiples of the stride (the backbone's stride-2 convs
    see even sizes for any input whose sides are multiples of 32): then the total padding is
    ``max(k_eff - s, 0)``, split with the extra pixel after, exactly as TensorFlow does.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        pads = []
        for k, s, d in zip(self.kernel_size, self.stride, self.dilation):
            total = max((k - 1) * d + 1 - s, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        self.static_pad = (left, right, top, bottom)
        self.padding = (0, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.static_pad):
            x = F.pad(x, self.static_pad)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def replace_modules(module: nn.Module, make: Callable[[nn.Module], nn.Module | None]) -> int:
    """Swap, in place, every submodule for which ``make(child)`` returns a new module; returns
    how many were swapped. ``make`` hands the old module's tensors to the new one, so
    parameter names and values (and state dicts) are unchanged."""
    replaced = 0
    for parent in list(module.modules()):
        for child_name, child in list(parent.named_children()):
            new = make(child)
            if new is not None:
                new.train(child.training)
                setattr(parent, child_name, new)
                replaced += 1
    return replaced


def _conv_like(child: nn.Conv2d, cls: type[nn.Conv2d], **kwargs: Any) -> nn.Conv2d:
    """A ``cls`` conv with ``child``'s shape and its own weight and bias tensors."""
    kh, kw = child.kernel_size  # typed tuple[int, ...]; a 2-d conv's has two
    new = cls(
        child.in_channels,
        child.out_channels,
        (kh, kw),
        bias=child.bias is not None,
        device=child.weight.device,
        dtype=child.weight.dtype,
        **kwargs,
    )
    new.weight = child.weight
    if child.bias is not None:
        new.bias = child.bias
    return new


def make_same_padding_static(module: nn.Module) -> int:
    """Replace timm's dynamically padded ``Conv2dSame`` layers by ``StaticSameConv2d``, in place.

    Parameter names and values are unchanged (the new conv takes the old one's tensors), so
    state dicts keep loading. Returns the number of convs replaced.
    """
    from timm.layers import Conv2dSame

    def make(child: nn.Module) -> nn.Module | None:
        if not isinstance(child, Conv2dSame):
            return None
        return _conv_like(child, StaticSameConv2d, stride=child.stride, dilation=child.dilation, groups=child.groups)

    return replace_modules(module, make)


class PointwiseConv2d(nn.Conv2d):
    """A 1x1, stride-1 conv that runs as a matrix product on channels-last inputs.

    PyTorch sends such convs to its generic (im2col) kernel when a thread runs single-threaded
    with a batch under 16 (a heuristic in ``ConvParams::use_mkldnn``), which first copies a
    channels-last input to NCHW and back: on a one-thread training worker that was ~40% of a
    step (``engine/threads.py``). On NHWC memory the conv is exactly ``x @ W^T`` over the
    pixels, so ``F.linear`` on the permuted view (no copy) runs it with one GEMM, forward and
    backward, and returns a channels-last result. Other inputs take the usual conv.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            out = F.linear(x.permute(0, 2, 3, 1), self.weight.flatten(1), self.bias)  # [N, H, W, C_out]
            return out.permute(0, 3, 1, 2)
        return super().forward(x)


def make_pointwise_convs_matmul(module: nn.Module) -> int:
    """Replace 1x1, stride-1, ungrouped, unpadded convs (``nn.Conv2d``, :class:`StaticSameConv2d`)
    by :class:`PointwiseConv2d`, in place (the new conv takes the old one's parameters: names and
    values are unchanged). For training on CPUs; exports keep plain convs. Returns the number
    replaced."""

    def make(child: nn.Module) -> nn.Module | None:
        if not isinstance(child, nn.Conv2d):
            return None
        unpadded = type(child) is nn.Conv2d or (type(child) is StaticSameConv2d and not any(child.static_pad))
        if not (
            unpadded
            and child.kernel_size == (1, 1)
            and child.stride == (1, 1)
            and child.dilation == (1, 1)
            and child.groups == 1
            and child.padding in ((0, 0), "valid")
        ):
            return None
        conv = _conv_like(child, PointwiseConv2d)
        # A [C_out, C_in, 1, 1] weight is the same memory in either format, but channels-last
        # gives it strides (C_in, 1, C_in, C_in) while the gradient of ``weight.flatten(1)``
        # comes back with (C_in, 1, 1, 1): DDP's gradient buckets follow the parameter's
        # strides and warned "Grad strides do not match bucket view strides" for every such
        # conv. The standard strides (no copy of values) make both agree.
        conv.weight.data = conv.weight.data.clone(memory_format=torch.contiguous_format)
        return conv

    return replace_modules(module, make)
