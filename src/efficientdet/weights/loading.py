"""Putting a checkpoint's tensors into a built model, with errors that say what is wrong."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .io import WeightsError

CLASS_HEAD_LAST = ("class_head.predict.pw.weight", "class_head.predict.pw.bias")


def checkpoint_num_classes(state_dict: dict[str, torch.Tensor], num_anchors: int) -> int | None:
    """Number of classes the checkpoint's class head predicts (None if it has no class head)."""
    weight = state_dict.get(CLASS_HEAD_LAST[0])
    if weight is None:
        weight = state_dict.get("class_head.predict.conv.weight")
    if weight is None:
        return None
    return int(weight.shape[0]) // num_anchors


def reorder_class_head(
    state_dict: dict[str, torch.Tensor], from_names: Sequence[str], to_names: Sequence[str], num_anchors: int
) -> dict[str, torch.Tensor]:
    """``state_dict`` with the class head's last layer reordered from ``from_names`` to
    ``to_names`` (the same names in another order; else ``state_dict`` as is).

    Its output channels are anchor-major (``a * K + k``, ops/outputs.py), so every anchor's
    rows are permuted alike: a model trained on ``[dog, raccoon]`` and fine-tuned on data
    that lists ``[raccoon, dog]`` keeps predicting each class under its own name.
    """
    k = len(to_names)
    if len(from_names) != k or list(from_names) == list(to_names) or sorted(from_names) != sorted(to_names):
        return state_dict
    if len(set(to_names)) != k:  # repeated names: no one order
        return state_dict
    rows = torch.tensor([a * k + list(from_names).index(n) for a in range(num_anchors) for n in to_names])
    out = dict(state_dict)
    for key, value in state_dict.items():
        if (key in CLASS_HEAD_LAST or key.startswith("class_head.predict.conv.")) and value.shape[0] == rows.numel():
            out[key] = value.index_select(0, rows)
    return out


def load_into_model(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str | Path) -> list[str]:
    """Load ``state_dict`` (native key names) into ``model``; return re-initialised keys.

    If only the class head's last layer differs in shape (another number of classes), that
    layer keeps the model's fresh initialisation and a warning says so. Any other difference
    raises ``WeightsError``: naming the variant the weights are for when their shapes are
    another named variant's (``identify.py``), else the first mismatched keys and their shapes.
    """
    own = model.state_dict()
    mismatched = [
        (k, tuple(v.shape), tuple(own[k].shape))
        for k, v in state_dict.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    reinit = [k for k, _, _ in mismatched if k in CLASS_HEAD_LAST or k.startswith("class_head.predict.conv.")]
    others = [m for m in mismatched if m[0] not in reinit]
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if others or missing or unexpected:
        parts = []
        if others:
            shown = "; ".join(f"{k}: checkpoint {a} vs model {b}" for k, a, b in others[:5])
            parts.append(f"{len(others)} tensor(s) with other shapes, first: {shown}")
        if missing:
            parts.append(f"{len(missing)} key(s) missing from the checkpoint, first: {missing[:5]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), first: {unexpected[:5]}")
        name = getattr(getattr(model, "config", None), "name", type(model).__name__)
        detail = " | ".join(parts)
        # A plain state dict says nothing about its variant; its shapes do (see identify.py).
        from .identify import variant_mismatch_message

        named = variant_mismatch_message(state_dict, name, str(source))
        if named is not None:
            if others:
                k, a, b = others[0]
                first = f"{len(others)} tensor(s) with other shapes, first: {k}: checkpoint {a} vs model {b}"
            else:
                first = f"{len(missing)} key(s) missing" if missing else f"{len(unexpected)} unexpected key(s)"
                first += f", first: {(missing or unexpected)[0]}"
            raise WeightsError(f"{named} ({first})")
        raise WeightsError(
            f"{source}: checkpoint does not fit model {name!r}: {detail}. Is it a checkpoint of another variant?"
        )
    if reinit:
        warnings.warn(
            f"{source}: the class head's last layer has another number of classes "
            f"({dict((k, a) for k, a, _ in mismatched if k in reinit)}); it is re-initialised "
            "(all other weights are loaded). Fine-tune before use.",
            stacklevel=3,
        )
        state_dict = {k: v for k, v in state_dict.items() if k not in reinit}
        for k in reinit:
            state_dict[k] = own[k]
    model.load_state_dict(state_dict, strict=True)
    return reinit
