"""Class and box prediction heads, shared across pyramid levels with a BatchNorm per level."""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn

from .layers import ConvBN, SeparableConv2d, make_activation


class Head(nn.Module):
    """``repeats`` x (conv -> BN of that level -> act), then a conv predicting ``num_anchors *
    outputs_per_anchor`` channels per location (channel = anchor * outputs + output).

    Convs are shared by all levels; the BNs are not (the official design: statistics differ
    per level). ``[[N, C, H_l, W_l]] -> [[N, A * outputs, H_l, W_l]]``.
    """

    def __init__(
        self,
        channels: int,
        outputs_per_anchor: int,
        num_anchors: int,
        num_levels: int,
        repeats: int,
        activation: str = "silu",
        separable: bool = True,
        bias_init: float = 0.0,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.01,
    ) -> None:
        super().__init__()

        def conv(out_channels: int) -> SeparableConv2d | ConvBN:
            if separable:
                return SeparableConv2d(channels, out_channels, 3, bias=True, norm=False)
            return ConvBN(channels, out_channels, 3, norm=False)

        self.convs = nn.ModuleList([conv(channels) for _ in range(repeats)])
        self.norms = nn.ModuleList(
            [
                nn.ModuleList([nn.BatchNorm2d(channels, eps=bn_eps, momentum=bn_momentum) for _ in range(num_levels)])
                for _ in range(repeats)
            ]
        )
        self.act = make_activation(activation)
        self.predict = conv(num_anchors * outputs_per_anchor)
        self.outputs_per_anchor = outputs_per_anchor
        self.num_anchors = num_anchors
        self.reset_parameters(bias_init)

    def reset_parameters(self, bias_init: float = 0.0) -> None:
        """TF-style init: conv weights N(0, 1/fan_in); prediction bias ``bias_init``."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                nn.init.normal_(m.weight, std=math.sqrt(1.0 / fan_in))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        last = self.predict.pw if isinstance(self.predict, SeparableConv2d) else self.predict.conv
        assert last.bias is not None
        nn.init.constant_(last.bias, bias_init)

    def last_layer(self) -> nn.Conv2d:
        """The conv whose output channels depend on the number of classes."""
        return self.predict.pw if isinstance(self.predict, SeparableConv2d) else self.predict.conv

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        outputs = []
        for level, x in enumerate(feats):
            for conv, norms in zip(self.convs, self.norms):
                # a ModuleList iterates as plain Modules; each of self.norms is a ModuleList (one BN per level)
                x = self.act(cast(nn.ModuleList, norms)[level](conv(x)))
            outputs.append(self.predict(x))
        return outputs


def class_head_bias(prior_prob: float) -> float:
    """Bias making the initial sigmoid output ``prior_prob`` (focal-loss paper's trick)."""
    return -math.log((1.0 - prior_prob) / prior_prob)
