"""Which named variant a state dict belongs to, read from its tensor shapes.

Plain state dicts (effdet ``.pth`` files, safetensors written by other tools) carry no config,
so loading one into the wrong variant used to fail with a wall of shape mismatches. Here the
BiFPN width, cell count, nodes per cell (pyramid levels), head depth and fusion kind are read
from the (native-named) tensors and matched against ``variants.MODEL_TABLE``; candidates are
confirmed by comparing every shape with the candidate built on the meta device (no memory).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

__all__ = ["WeightsSignature", "identify_variants", "signature_of", "variant_mismatch_message"]

_CELL = re.compile(r"^feature_net\.cells\.(\d+)\.nodes\.(\d+)\.")
_HEAD_CONV = re.compile(r"^class_head\.convs\.(\d+)\.")
_BLOCK = re.compile(r"^backbone\.blocks\.(\d+)\.(\d+)\.")
# The class head's last layer depends on the number of classes, not on the variant.
_CLASS_DEPENDENT = ("class_head.predict.",)


@dataclass(frozen=True)
class WeightsSignature:
    """Architecture facts readable from a state dict's shapes (None: not found)."""

    channels: int | None  # BiFPN / head width
    cells: int  # BiFPN repeats
    nodes: int | None  # fusion nodes per cell: 2 * (levels - 1)
    head_repeats: int  # class head convs before the prediction conv
    weighted_fusion: bool  # fast_normalized / softmax fusion keep edge weights; "sum" none
    stem_channels: int | None  # backbone stem conv output channels
    backbone_blocks: int  # backbone inverted-residual blocks

    def describe(self) -> str:
        """e.g. ``BiFPN 88 channels, 4 cells, 5 levels, 3 head convs, backbone stem 32 ch / 23 blocks``."""
        parts = [f"BiFPN {self.channels if self.channels is not None else '?'} channels", f"{self.cells} cells"]
        if self.nodes is not None:
            parts.append(f"{self.nodes // 2 + 1} levels")
        parts.append(f"{self.head_repeats} head convs")
        parts.append("weighted fusion" if self.weighted_fusion else "sum fusion")
        if self.stem_channels is not None:
            parts.append(f"backbone stem {self.stem_channels} ch / {self.backbone_blocks} blocks")
        return ", ".join(parts)


def signature_of(state_dict: Mapping[str, torch.Tensor]) -> WeightsSignature | None:
    """The signature of a native-named state dict (``effdet_to_native`` first for effdet's);
    None when it has no BiFPN cells (not an EfficientDet state dict)."""
    cells: dict[int, set[int]] = {}
    for key in state_dict:
        m = _CELL.match(key)
        if m:
            cells.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if not cells:
        return None
    channels = None
    for suffix in ("conv.pw.weight", "conv.conv.weight"):
        w = state_dict.get(f"feature_net.cells.0.nodes.0.{suffix}")
        if w is not None:
            channels = int(w.shape[0])
            break
    stem = state_dict.get("backbone.conv_stem.weight")
    return WeightsSignature(
        channels=channels,
        cells=max(cells) + 1,
        nodes=len(cells[0]) if 0 in cells else None,
        head_repeats=len({int(m.group(1)) for k in state_dict if (m := _HEAD_CONV.match(k))}),
        weighted_fusion="feature_net.cells.0.nodes.0.weight" in state_dict,
        stem_channels=int(stem.shape[0]) if stem is not None else None,
        backbone_blocks=len({(m.group(1), m.group(2)) for k in state_dict if (m := _BLOCK.match(k))}),
    )


def _config_signature(name: str) -> tuple[int, int, int, int, bool]:
    from ..variants import get_config

    cfg = get_config(name)
    fn = cfg.feature_net
    levels = fn.max_level - fn.min_level + 1
    return fn.channels, fn.repeats, 2 * (levels - 1), cfg.head.repeats, fn.fusion != "sum"


@functools.cache
def _variant_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """Every tensor shape of variant ``name`` (built on the meta device: no memory, ~0.5 s)."""
    from ..models.efficientdet import build_model
    from ..variants import get_config

    with torch.device("meta"):
        model = build_model(get_config(name))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _fits(state_dict: Mapping[str, torch.Tensor], name: str) -> bool:
    shapes = _variant_shapes(name)
    keys = {k for k in state_dict if not k.startswith(_CLASS_DEPENDENT)}
    if keys != {k for k in shapes if not k.startswith(_CLASS_DEPENDENT)}:
        return False
    return all(tuple(state_dict[k].shape) == shapes[k] for k in keys)


def identify_variants(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Named variants (``list_models()`` order) whose every tensor shape the state dict has,
    the class head's last layer aside. Several names when variants share an architecture
    (D6 and D7 differ only in input size and anchor scale); empty when none fits."""
    from ..variants import list_models

    sig = signature_of(state_dict)
    if sig is None:
        return []
    key = (sig.channels, sig.cells, sig.nodes, sig.head_repeats, sig.weighted_fusion)
    # The cheap config-level match narrows 15 variants to one or two before any build.
    candidates = [n for n in list_models() if _config_signature(n) == key]
    return [n for n in candidates if _fits(state_dict, n)]


def variant_mismatch_message(state_dict: Mapping[str, torch.Tensor], expected: str, source: str) -> str | None:
    """The error for weights that do not fit variant ``expected``: which variant they are for,
    or that they are no known variant; None when they are ``expected``'s own architecture (the
    mismatch is elsewhere, e.g. a config override) or no EfficientDet at all."""
    sig = signature_of(state_dict)
    if sig is None:
        return None
    found = identify_variants(state_dict)
    if expected in found:
        return None
    if found:
        names = " or ".join(found)
        return f"{source}: these weights are for {names} ({sig.describe()}), not {expected}"
    return f"{source}: these weights are not any known variant ({sig.describe()}), so they do not fit {expected}"
