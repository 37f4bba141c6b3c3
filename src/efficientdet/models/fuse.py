"""Inference-time graph simplification: fold BatchNorm into the conv before it.

In eval mode a BatchNorm is a per-channel affine map ``y = x * s + t`` with
``s = gamma / sqrt(var + eps)`` and ``t = beta - mean * s``. When ``x`` is the output of a conv
used nowhere else, ``s`` and ``t`` can be baked into the conv's kernel and bias and the BN
dropped: one memory pass fewer per layer, same outputs up to float rounding.

Which convs feed which BNs is read from the modules' own forward code with ``torch.fx``
(convs and BNs kept as leaves), never guessed from attribute names, so any timm backbone is
handled. Modules whose forward cannot be traced (the ones with shape-dependent Python control
flow: the detector itself, the fusion nodes, the heads) are skipped and their children traced
instead.

What is folded in an EfficientDet:

* ``SeparableConv2d``: ``pw`` + ``bn`` (BiFPN nodes), ``ConvBN``: ``conv`` + ``bn`` (the 1x1
  projections and P6's conv).
* timm EfficientNet blocks: every conv + ``BatchNormAct2d``; the BN part is folded and the
  module is replaced by its activation (and its drop layer, an identity in eval), so
  ``conv -> BN -> act`` becomes ``conv' -> act``.

What is not: the heads. Their convs are shared by all pyramid levels, but each level has its
own BN, so no single kernel can absorb them. Folding would need a copy of the head's
pointwise conv per level and repeat (``levels x repeats`` copies) — small weights, but the
saving is one cheap per-channel affine pass per level on maps of ``channels`` planes, a few
percent at most of the head's cost, and the model would no longer match its checkpoint's
structure. We keep the heads' BNs.
"""

from __future__ import annotations

import copy
from collections import Counter
from typing import TYPE_CHECKING

import torch
import torch.fx
from torch import nn

from efficientdet.models.layers import StaticSameConv2d

if TYPE_CHECKING:
    from timm.layers import BatchNormAct2d

__all__ = ["count_batchnorms", "fuse_batchnorm", "optimize_for_inference"]


def _foldable_conv_types() -> tuple[type[nn.Module], ...]:
    """Convs whose output is ``conv2d(maybe_pad(x), weight, bias)``: linear in weight and bias
    per output channel. Subclasses that transform their weight in forward (weight
    standardisation) are not listed and so never folded."""
    types: list[type[nn.Module]] = [nn.Conv2d, StaticSameConv2d]
    try:
        from timm.layers import Conv2dSame

        types.append(Conv2dSame)
    except ImportError:  # pragma: no cover - timm is a dependency, but fold plain convs without it
        pass
    return tuple(types)


def _batchnorm_act_type() -> type[BatchNormAct2d] | None:
    try:
        from timm.layers import BatchNormAct2d

        return BatchNormAct2d
    except ImportError:  # pragma: no cover
        return None


class _LeafTracer(torch.fx.Tracer):
    """fx tracer that keeps every conv and BN (subclasses included) as one call_module node."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, (nn.Conv2d, nn.modules.batchnorm._BatchNorm)):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _trace(module: nn.Module) -> torch.fx.Graph | None:
    """The fx graph of ``module``'s forward, or None when it is not symbolically traceable."""
    try:
        return _LeafTracer().trace(module)
    except Exception:  # deliberately broad: any tracing failure just means "look at the children"
        return None


def _conv_bn_pairs(root: nn.Module) -> list[tuple[str, str]]:
    """Qualified names (relative to ``root``) of (conv, bn) pairs where the BN's only input is
    the conv's output and that output has no other use. Recurses into untraceable modules."""
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in root.modules()):
        return []  # nothing to fold below here: skip the (slow-ish) trace
    if isinstance(root, (nn.Conv2d, nn.modules.batchnorm._BatchNorm)):
        return []  # a leaf on its own has no pair
    graph = _trace(root)
    if graph is None:
        pairs: list[tuple[str, str]] = []
        for name, child in root.named_children():
            pairs.extend((f"{name}.{c}", f"{name}.{b}") for c, b in _conv_bn_pairs(child))
        return pairs
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    modules = dict(root.named_modules())
    bn_types = (nn.BatchNorm2d,) + ((_batchnorm_act_type(),) if _batchnorm_act_type() else ())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or type(modules[node.target]) not in bn_types:
            continue
        if len(node.args) != 1 or node.kwargs:
            continue
        src = node.args[0]
        if not isinstance(src, torch.fx.Node) or src.op != "call_module":
            continue
        if type(modules[src.target]) not in _foldable_conv_types():
            continue
        # A conv or BN called twice (shared across inputs) cannot absorb a single BN.
        if len(src.users) != 1 or calls[src.target] != 1 or calls[node.target] != 1:
            continue
        pairs.append((str(src.target), str(node.target)))
    return pairs


@torch.no_grad()
def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold eval-mode ``bn`` into ``conv``'s weight and bias, in place (float64 arithmetic)."""
    assert bn.running_mean is not None and bn.running_var is not None
    w = conv.weight
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(shift)
    new_w = (w.double() * scale.view(-1, *([1] * (w.dim() - 1)))).to(w.dtype)
    new_b = (bias * scale + shift).to(w.dtype)
    conv.weight.copy_(new_w)
    if conv.bias is None:
        conv.bias = nn.Parameter(new_b, requires_grad=conv.weight.requires_grad)
    else:
        conv.bias.copy_(new_b)


def _replacement(bn: nn.Module) -> nn.Module:
    """What is left of a BN after folding: nothing, or a BatchNormAct2d's drop + activation."""
    bn_act = _batchnorm_act_type()
    if bn_act is not None and type(bn) is bn_act:
        drop, act = bn.drop, bn.act
        if isinstance(drop, nn.Identity):
            return act
        return nn.Sequential(drop, act)
    return nn.Identity()


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def fuse_batchnorm(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold every BatchNorm that directly follows a conv into that conv (see module docs).

    Returns the model in eval mode (a deep copy unless ``inplace``): outputs equal the unfused
    eval model's up to float rounding (~1e-6 relative). The result is for inference only: the
    folded BNs are gone, so training it again would train without them.

    Safety rules: a pair is folded only when the conv's output feeds nothing but the BN, both
    modules are called once in their traced parent, neither is registered twice in the model,
    the conv's weight is not shared, and the BN has running statistics.
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    # Modules / weights reachable under several names are shared: folding one use breaks another.
    module_uses = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    param_uses = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    for conv_name, bn_name in _conv_bn_pairs(model):
        conv = model.get_submodule(conv_name)
        bn = model.get_submodule(bn_name)
        if module_uses[id(conv)] != 1 or module_uses[id(bn)] != 1 or param_uses[id(conv.weight)] != 1:
            continue
        if not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
            continue  # such a BN normalises with batch statistics even in eval mode
        _fold(conv, bn)  # type: ignore[arg-type]
        _set_submodule(model, bn_name, _replacement(bn))
    return model


def count_batchnorms(model: nn.Module) -> int:
    """Number of BatchNorm modules left in ``model`` (for reports and tests)."""
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def optimize_for_inference(
    model: nn.Module,
    channels_last: bool = True,
    fuse: bool = True,
    compile: bool = False,
    inplace: bool = False,
) -> nn.Module:
    """An eval-mode copy of ``model`` tuned for inference.

    Args:
        channels_last: store conv weights NHWC (``torch.channels_last``). oneDNN / cuDNN run
            depthwise and 1x1 convs faster in NHWC, and activations follow the weights' layout,
            so inputs need no conversion by the caller.
        fuse: fold BatchNorms into convs (:func:`fuse_batchnorm`).
        compile: wrap in ``torch.compile`` (first call compiles; the wrapper forwards attribute
            access such as ``.config`` to the model).
        inplace: modify ``model`` itself instead of a copy.
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    if fuse:
        model = fuse_batchnorm(model, inplace=True)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        return torch.compile(model)  # type: ignore[return-value]
    return model
