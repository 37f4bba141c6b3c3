"""Export-time rewrites that keep ONNX Runtime's CPU graph in its blocked (NCHWc) layout.

ONNX Runtime's CPU provider runs convs in a channel-blocked layout ("NCHWc") and converts back
to NCHW (``ReorderOutput``, a full copy of the tensor) before every op it cannot run blocked,
then forward again (``ReorderInput``) before the next conv. Ops it runs blocked: Conv,
MaxPool/AveragePool, GlobalAveragePool, Add/Sum/Mul of equally shaped blocked tensors,
Concat on channels, Relu/Sigmoid/Tanh, BatchNormalization, nearest ``Resize`` with constant
integer scales, and a NCHW->NHWC Transpose. What the plain export gives, and how it is rewritten
here (each change leaves the outputs equal up to float rounding, ~1e-6):

* Head outputs: each level's last (pointwise) conv has ``A*K`` channels (810 for COCO) and is
  then transposed to NHWC and concatenated: a blocked->NHWC reorder of a [810, 64, 64] map
  strides through memory badly (~10% of D0's time) and the concat copies it again.
  :class:`FlatHead` instead transposes the 64-channel input of that 1x1 conv, concatenates the
  levels (small) and applies the conv as one matrix product whose output is already the
  flat [N, T, K] layout. It also folds each level's BatchNorm into a per-level copy of the
  shared pointwise conv before it (``fuse.py`` cannot: one conv, five BNs), which saves the
  dynamo graph's 30 ``BatchNormalization`` passes.
* BiFPN fusion: ``sum_i x_i * relu(w_i) / (sum_j relu(w_j) + eps)`` is computed at run time from
  scalar parameters; the scalar Mul/Div cannot run blocked, so every fusion input was reordered
  to NCHW and the sum back. :class:`ConstantFusionNode` bakes the normalised weights in (eval
  only) and applies each as a 1x1 depthwise conv (a constant per-channel scale, which the NCHWc
  conv runs and fuses the following Add into); upsampling by exactly 2 uses a constant scale
  factor (``Resize`` with ``scales``, which runs blocked) instead of a size computed from shapes.

Both modules re-implement a few lines of ``Head.forward`` / ``FusionNode.forward`` (models/):
a change there must be mirrored here; tests/export/test_ort_graph.py compares them. What it
gains is measured in docs/benchmarks.md.
"""

from __future__ import annotations

from typing import TypeGuard, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.bifpn import FusionNode
from ..models.efficientdet import EfficientDet
from ..models.heads import Head
from ..models.layers import ConvBN, SeparableConv2d, max_pool_same
from .graph import FlatOutputs

__all__ = [
    "ConstantFusionNode",
    "FlatHead",
    "OrtFlatOutputs",
    "bake_fusion_weights",
    "export_network",
    "flat_head_supported",
]


def flat_head_supported(head: nn.Module | None) -> bool:
    """Whether :class:`FlatHead` can take ``head``: a :class:`Head` of separable convs (the
    EfficientDet heads; ``separable=False`` variants are flattened the plain way)."""
    return _flat_head_parts(head) is not None


def _flat_head_parts(
    head: nn.Module | None,
) -> tuple[list[SeparableConv2d], SeparableConv2d, list[list[nn.BatchNorm2d]]] | None:
    """(convs, last conv, BNs per repeat and level) of a head :class:`FlatHead` can take, else None."""
    if not isinstance(head, Head) or not isinstance(head.predict, SeparableConv2d) or head.predict.bn is not None:
        return None
    convs = [c for c in head.convs if isinstance(c, SeparableConv2d) and c.bn is None]
    if len(convs) != len(head.convs):
        return None
    # Head.norms holds one ModuleList of per-level BNs per repeat (a Module's items are untyped).
    norms = [list(cast(nn.ModuleList, level_norms)) for level_norms in head.norms]
    bns = [[bn for bn in level_norms if _foldable_bn(bn)] for level_norms in norms]
    if any(len(b) != len(n) for b, n in zip(bns, norms)):
        return None
    return convs, head.predict, bns


def _foldable_bn(module: nn.Module) -> TypeGuard[nn.BatchNorm2d]:
    """A BatchNorm2d that normalises with running statistics (the kind that can be folded)."""
    return type(module) is nn.BatchNorm2d and module.running_mean is not None and module.running_var is not None


def _folded_pointwise(pw: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """``bn(pw(x))`` as one 1x1 conv: (weight [C_out, C_in, 1, 1], bias [C_out]), float64 math."""
    assert bn.running_mean is not None and bn.running_var is not None
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale + (bn.bias.double() if bn.bias is not None else 0.0)
    bias = pw.bias.double() if pw.bias is not None else torch.zeros_like(shift)
    weight = pw.weight.double() * scale.view(-1, 1, 1, 1)
    return weight.to(pw.weight.dtype), (bias * scale + shift).to(pw.weight.dtype)


class FlatHead(nn.Module):
    """A :class:`Head` for inference, flattened: ``[[N, C, H_l, W_l]] -> [N, T, outputs]``,
    rows in anchor order (level, y, x, anchor), as ``ops.outputs.flatten_outputs`` of the
    head's outputs (equal up to float rounding). Eval only: BN statistics are baked in.
    """

    def __init__(self, head: Head, outputs_per_anchor: int) -> None:
        super().__init__()
        parts = _flat_head_parts(head)
        if parts is None:
            raise ValueError("FlatHead needs a Head of separable convs without BN in its convs")
        convs, predict, norms = parts
        self.outputs_per_anchor = outputs_per_anchor
        self.dws = nn.ModuleList([conv.dw for conv in convs])  # shared by all levels
        self.act = head.act
        self.predict_dw = predict.dw
        # Per repeat and level: the shared pointwise conv with that level's BN folded in.
        with torch.no_grad():
            folded = [[_folded_pointwise(conv.pw, bn) for bn in bns] for conv, bns in zip(convs, norms)]
        # Flat lists indexed repeat * num_levels + level.
        self.pw_weights = nn.ParameterList([nn.Parameter(w, requires_grad=False) for ws in folded for w, _ in ws])
        self.pw_biases = nn.ParameterList([nn.Parameter(b, requires_grad=False) for ws in folded for _, b in ws])
        self.num_levels = len(norms[0]) if norms else 0
        pw = predict.pw
        self.predict_weight = nn.Parameter(
            pw.weight.detach().reshape(pw.out_channels, pw.in_channels).clone(), requires_grad=False
        )  # [A*outputs, C]
        self.predict_bias = nn.Parameter(
            pw.bias.detach().clone() if pw.bias is not None else torch.zeros(pw.out_channels), requires_grad=False
        )

    def forward(self, feats: list[Tensor]) -> Tensor:
        batch = feats[0].shape[0]
        rows = []
        for level, x in enumerate(feats):
            for r, dw in enumerate(self.dws):
                k = r * self.num_levels + level
                x = self.act(F.conv2d(dw(x), self.pw_weights[k], self.pw_biases[k]))
            x = self.predict_dw(x)
            rows.append(x.permute(0, 2, 3, 1).reshape(batch, -1, x.shape[1]))  # [N, H*W, C]
        # The last 1x1 conv as one product over all levels' rows: output already [N, P, A*outputs].
        out = F.linear(torch.cat(rows, 1), self.predict_weight, self.predict_bias)
        return out.reshape(batch, -1, self.outputs_per_anchor)


class ConstantFusionNode(nn.Module):
    """:class:`FusionNode` for inference with its fusion weights baked in as constants.

    Same inputs, sub-modules and outputs as the node it is built from (``[N, C, H, W]`` at the
    node's level); only the fusion arithmetic differs: ``x_i * (w_i / s)`` with the quotient
    precomputed, instead of ``(x_i * w_i) / s`` (a rounding difference, ~1e-7 relative). Each
    weight is applied as a 1x1 depthwise conv, which ONNX Runtime runs in its blocked layout.
    """

    def __init__(self, node: FusionNode, channels: int) -> None:
        super().__init__()
        self.inputs = node.inputs
        self.level_steps = node.level_steps
        self.proj = node.proj
        self.act = node.act
        self.conv = node.conv
        weights = node._fusion_weights()
        scales = [] if weights is None else [float(w) for w in weights.detach().double().cpu()]
        # One [C, 1, 1, 1] depthwise kernel per input: a per-channel constant scale.
        self.scales = nn.ParameterList(
            [nn.Parameter(torch.full((channels, 1, 1, 1), w), requires_grad=False) for w in scales]
        )

    def forward(self, feats: list[Tensor]) -> Tensor:
        """``feats``: the running list of maps; returns ``[N, channels, H_level, W_level]``."""
        target = feats[self.inputs[self.level_steps.index(0)]].shape[-2:] if 0 in self.level_steps else None
        out: Tensor | None = None
        for i, (idx, step) in enumerate(zip(self.inputs, self.level_steps)):
            x = feats[idx]
            key = str(idx)
            if key in self.proj:
                x = self.proj[key](x)
            if step > 0:
                x = max_pool_same(x, 2**step)
            elif step < 0:
                factor = 2**-step
                if target is None or (x.shape[-2] * factor, x.shape[-1] * factor) == tuple(target):
                    # A constant scale factor exports as Resize with constant ``scales``, which
                    # ONNX Runtime runs blocked (a size computed from shapes is not).
                    x = F.interpolate(x, scale_factor=float(factor), mode="nearest")
                else:  # sizes that "same" pooling rounded up (Lite0 at 320): as FusionNode
                    x = F.interpolate(x, size=target, mode="nearest")
            if len(self.scales):
                x = F.conv2d(x, self.scales[i].to(x.dtype), groups=x.shape[1])
            out = x if out is None else out + x
        assert out is not None
        return self.conv(self.act(out))


def bake_fusion_weights(model: nn.Module) -> int:
    """Replace every :class:`FusionNode` in ``model`` by a :class:`ConstantFusionNode`, in place
    (eval use only); returns the number replaced."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is FusionNode:
                conv = child.conv
                # FusionNode.conv is declared nn.Module: a SeparableConv2d or a ConvBN.
                first = conv.dw if isinstance(conv, SeparableConv2d) else cast(ConvBN, conv).conv
                setattr(parent, name, ConstantFusionNode(child, int(first.in_channels)))
                replaced += 1
    return replaced


class OrtFlatOutputs(nn.Module):
    """What the ONNX export traces: images [N, 3, H, W] -> (cls [N, T, K] logits, box [N, T, 4]
    codes), as ``graph.FlatOutputs`` computes them, with this module's rewrites applied.

    ``model`` is modified in place (its fusion nodes are replaced): pass an inference copy.
    """

    def __init__(self, model: EfficientDet, num_classes: int) -> None:
        super().__init__()
        model.eval()
        bake_fusion_weights(model.feature_net)
        self.backbone = model.backbone
        self.feature_net = model.feature_net
        self.class_head = FlatHead(model.class_head, num_classes)
        self.box_head = FlatHead(model.box_head, 4)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        feats = self.feature_net(self.backbone(images))
        return self.class_head(feats), self.box_head(feats)


def export_network(model: nn.Module, num_classes: int) -> nn.Module:
    """The module ``export_onnx`` traces for ``model`` (an inference copy, modified in place):
    :class:`OrtFlatOutputs` for an :class:`EfficientDet` with separable heads, otherwise
    ``graph.FlatOutputs`` around the model with its fusion weights baked in."""
    heads = (getattr(model, "class_head", None), getattr(model, "box_head", None))
    if isinstance(model, EfficientDet) and all(flat_head_supported(h) for h in heads):
        return OrtFlatOutputs(model, num_classes).eval()
    bake_fusion_weights(model)
    return FlatOutputs(model, num_classes).eval()
