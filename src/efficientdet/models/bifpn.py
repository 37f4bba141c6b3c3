"""The feature network: BiFPN (and FPN / PANet for the paper's ablation), topology as data.

A topology is a tuple of ``FusionNodeSpec``. Feature maps are kept in one running list: the
cell's inputs (P_min .. P_max) take indices 0 .. L-1, and node k's output is appended with
index L + k. A node names its inputs by these indices, fuses them (after resampling each to
the node's level) and applies activation -> separable conv -> BN (the official order).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .checkpointing import checkpointed_call
from .layers import ConvBN, SeparableConv2d, make_activation, max_pool_same

FUSION_MODES = ("fast_normalized", "softmax", "unbounded", "sum")
TOPOLOGIES = ("bifpn", "fpn", "panet")


@dataclass(frozen=True)
class FusionNodeSpec:
    """One fusion node: its pyramid ``level`` and the running-list indices it fuses."""

    level: int
    inputs: tuple[int, ...]


class _Tracker:
    """Tracks, per level, the running-list indices of the feature maps made so far."""

    def __init__(self, min_level: int, max_level: int) -> None:
        self.ids = {level: [i] for i, level in enumerate(range(min_level, max_level + 1))}
        self.next_id = max_level - min_level + 1
        self.nodes: list[FusionNodeSpec] = []

    def last(self, level: int) -> int:
        return self.ids[level][-1]

    def add(self, level: int, inputs: list[int]) -> None:
        self.nodes.append(FusionNodeSpec(level, tuple(inputs)))
        self.ids[level].append(self.next_id)
        self.next_id += 1


def bifpn_topology(min_level: int, max_level: int) -> tuple[FusionNodeSpec, ...]:
    """BiFPN: top-down from P_{max-1} to P_min, then bottom-up to P_max with a skip edge from
    the level's input (for P3-P7: P6<-[3,4], P5<-[2,5], ..., P7<-[4,11])."""
    t = _Tracker(min_level, max_level)
    for level in range(max_level - 1, min_level - 1, -1):
        t.add(level, [t.last(level), t.last(level + 1)])
    for level in range(min_level + 1, max_level + 1):
        t.add(level, t.ids[level] + [t.last(level - 1)])
    return tuple(t.nodes)


def fpn_topology(min_level: int, max_level: int) -> tuple[FusionNodeSpec, ...]:
    """FPN: top-down only; P_max passes through unchanged."""
    t = _Tracker(min_level, max_level)
    for level in range(max_level - 1, min_level - 1, -1):
        t.add(level, [t.last(level), t.last(level + 1)])
    return tuple(t.nodes)


def panet_topology(min_level: int, max_level: int) -> tuple[FusionNodeSpec, ...]:
    """PANet: FPN's top-down path followed by a bottom-up path (two inputs per node)."""
    t = _Tracker(min_level, max_level)
    for level in range(max_level - 1, min_level - 1, -1):
        t.add(level, [t.last(level), t.last(level + 1)])
    for level in range(min_level + 1, max_level + 1):
        t.add(level, [t.last(level), t.last(level - 1)])
    return tuple(t.nodes)


def make_topology(name: str, min_level: int, max_level: int) -> tuple[FusionNodeSpec, ...]:
    builders = {"bifpn": bifpn_topology, "fpn": fpn_topology, "panet": panet_topology}
    if name not in builders:
        raise ValueError(f"unknown feature-network topology {name!r}; valid: {', '.join(builders)}")
    return builders[name](min_level, max_level)


def output_indices(topology: tuple[FusionNodeSpec, ...], min_level: int, max_level: int) -> list[int]:
    """Running-list index of each level's output: the last map made at that level."""
    last = {level: i for i, level in enumerate(range(min_level, max_level + 1))}
    base = max_level - min_level + 1
    for k, node in enumerate(topology):
        last[node.level] = base + k
    return [last[level] for level in range(min_level, max_level + 1)]


class FusionNode(nn.Module):
    """Resample inputs to one level, fuse them with learned weights, act -> sep-conv -> BN.

    ``input_channels[i]`` / ``input_levels[i]`` describe input i. Inputs whose channel count
    differs from ``channels`` get their own 1x1 conv + BN (``proj``, keyed by running index).
    """

    def __init__(
        self,
        spec: FusionNodeSpec,
        input_channels: list[int],
        input_levels: list[int],
        channels: int,
        fusion: str,
        activation: str,
        separable: bool = True,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.01,
    ) -> None:
        super().__init__()
        if fusion not in FUSION_MODES:
            raise ValueError(f"unknown fusion {fusion!r}; valid: {', '.join(FUSION_MODES)}")
        self.inputs = spec.inputs
        self.fusion = fusion
        # level difference per input: > 0 downsample by 2**d, < 0 upsample by 2**-d
        self.level_steps = [spec.level - lvl for lvl in input_levels]
        self.proj = nn.ModuleDict(
            {
                str(idx): ConvBN(ch, channels, 1, bn_eps=bn_eps, bn_momentum=bn_momentum)
                for idx, ch in zip(spec.inputs, input_channels)
                if ch != channels
            }
        )
        self.weight = nn.Parameter(torch.ones(len(spec.inputs))) if fusion != "sum" else None
        self.act = make_activation(activation)
        if separable:
            self.conv: nn.Module = SeparableConv2d(channels, channels, 3, True, True, bn_eps, bn_momentum)
        else:
            self.conv = ConvBN(channels, channels, 3, True, bn_eps, bn_momentum)

    def _fusion_terms(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(per-input weights, divisor or None): the fused map is sum_i x_i * w_i [/ divisor]."""
        if self.weight is None:
            return None, None
        if self.fusion == "fast_normalized":
            w = F.relu(self.weight)
            return w, w.sum() + 1e-4
        if self.fusion == "softmax":
            return torch.softmax(self.weight, dim=0), None
        return self.weight, None  # unbounded

    def _fusion_weights(self) -> torch.Tensor | None:
        """The effective normalised weight of each input ([num_inputs]), or None for "sum"."""
        weights, denom = self._fusion_terms()
        if weights is None:
            return None
        return weights / denom if denom is not None else weights

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """``feats``: the running list; returns ``[N, channels, H_level, W_level]``."""
        weights, denom = self._fusion_terms()
        # Every node has an input at its own level; its size is the node's size. Upsampling
        # to that size (not by a factor 2) matters where "same" pooling rounded up an odd side
        # (Lite0 at 320: P6 5x5 -> P7 3x3; P7 upsampled to P6 must give 5x5).
        target = feats[self.inputs[self.level_steps.index(0)]].shape[-2:] if 0 in self.level_steps else None
        out: torch.Tensor | None = None
        for i, (idx, step) in enumerate(zip(self.inputs, self.level_steps)):
            x = feats[idx]
            key = str(idx)
            if key in self.proj:
                x = self.proj[key](x)
            if step > 0:
                x = max_pool_same(x, 2**step)
            elif step < 0:
                if target is not None:
                    x = F.interpolate(x, size=target, mode="nearest")
                else:
                    x = F.interpolate(x, scale_factor=float(2**-step), mode="nearest")
            if weights is not None:
                if denom is not None:  # noqa: SIM108 - the comment below belongs to this branch only
                    # (x * w) / sum, in the reference's order: a*(w/sum) rounds differently and
                    # the difference grows past 1e-4 through D5's seven cells
                    x = x * weights[i].to(x.dtype) / denom.to(x.dtype)
                else:
                    x = x * weights[i].to(x.dtype)
            out = x if out is None else out + x
        assert out is not None
        return self.conv(self.act(out))


class FeatureCell(nn.Module):
    """One repeat of the topology: ``[P_min..P_max] -> [P'_min..P'_max]``."""

    def __init__(
        self,
        topology: tuple[FusionNodeSpec, ...],
        in_channels: list[int],
        min_level: int,
        channels: int,
        fusion: str,
        activation: str,
        separable: bool = True,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.01,
    ) -> None:
        super().__init__()
        max_level = min_level + len(in_channels) - 1
        levels = list(range(min_level, max_level + 1))
        chans = list(in_channels)
        nodes = []
        for spec in topology:
            nodes.append(
                FusionNode(
                    spec,
                    [chans[i] for i in spec.inputs],
                    [levels[i] for i in spec.inputs],
                    channels,
                    fusion,
                    activation,
                    separable,
                    bn_eps,
                    bn_momentum,
                )
            )
            levels.append(spec.level)
            chans.append(channels)
        self.nodes = nn.ModuleList(nodes)
        self.outputs = output_indices(topology, min_level, max_level)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        running = list(feats)
        for node in self.nodes:
            running.append(node(running))
        return [running[i] for i in self.outputs]


class ExtraLevel(nn.Module):
    """Makes P_{l+1} from P_l: optional 1x1 conv + BN (P6 from the backbone's P5), then a
    stride-2 max-pool with TF "same" padding. ``[N,C,H,W] -> [N,channels,H/2,W/2]``."""

    def __init__(self, in_channels: int, channels: int, bn_eps: float = 1e-3, bn_momentum: float = 0.01) -> None:
        super().__init__()
        self.proj = ConvBN(in_channels, channels, 1, True, bn_eps, bn_momentum) if in_channels != channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.proj is not None:
            x = self.proj(x)
        return max_pool_same(x, 2)


class FeatureNetwork(nn.Module):
    """Backbone maps P3-P5 -> extra levels (P6, P7, P8) -> ``repeats`` cells of the topology."""

    def __init__(
        self,
        backbone_channels: list[int],
        min_level: int,
        max_level: int,
        channels: int,
        repeats: int,
        topology: str = "bifpn",
        fusion: str = "fast_normalized",
        activation: str = "silu",
        separable: bool = True,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.01,
    ) -> None:
        super().__init__()
        num_levels = max_level - min_level + 1
        if len(backbone_channels) > num_levels:
            raise ValueError(f"{len(backbone_channels)} backbone levels but only {num_levels} pyramid levels")
        chans = list(backbone_channels)
        extra = []
        while len(chans) < num_levels:
            extra.append(ExtraLevel(chans[-1], channels, bn_eps, bn_momentum))
            chans.append(channels)
        self.extra_levels = nn.ModuleList(extra)
        spec = make_topology(topology, min_level, max_level)
        cells = []
        for _ in range(repeats):
            cells.append(
                FeatureCell(spec, chans, min_level, channels, fusion, activation, separable, bn_eps, bn_momentum)
            )
            chans = [channels] * num_levels
        self.cells = nn.ModuleList(cells)
        self.grad_checkpointing = False  # models/checkpointing.set_grad_checkpointing

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """``[P3, P4, P5]`` from the backbone -> ``[P3', ..., P_max']`` each ``[N, channels, H_l, W_l]``."""
        feats = list(feats)
        for extra in self.extra_levels:
            feats.append(extra(feats[-1]))
        for cell in self.cells:
            # set_grad_checkpointing: the cell is recomputed in backward instead of kept
            feats = checkpointed_call(cell, cell, feats) if self.grad_checkpointing else cell(feats)
        return feats
