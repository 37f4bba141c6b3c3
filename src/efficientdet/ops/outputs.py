"""Per-level head outputs in anchor order: the one flattening rule (training, export, post-processing)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["check_levels", "flatten_outputs"]


def check_levels(class_outputs: Sequence[Tensor], box_outputs: Sequence[Tensor], num_classes: int) -> None:
    """Same number of class and box levels, and channel counts A*K / A*4 for one A per level."""
    if len(class_outputs) != len(box_outputs) or not class_outputs:
        raise ValueError(
            f"need the same non-zero number of class and box levels, got {len(class_outputs)} and {len(box_outputs)}"
        )
    for level, (c, b) in enumerate(zip(class_outputs, box_outputs)):
        if c.shape[1] % num_classes or b.shape[1] % 4 or c.shape[1] // num_classes != b.shape[1] // 4:
            raise ValueError(
                f"level {level}: class channels {c.shape[1]} and box channels {b.shape[1]} do not "
                f"match A*{num_classes} and A*4 for one anchor count A"
            )


def flatten_outputs(
    class_outputs: Sequence[Tensor], box_outputs: Sequence[Tensor], num_classes: int
) -> tuple[Tensor, Tensor]:
    """Per-level head outputs -> (cls [N, T, K], box [N, T, 4]) in anchor order.

    class_outputs[l]: [N, A*K, H_l, W_l]; box_outputs[l]: [N, A*4, H_l, W_l]. NHWC then reshape
    makes row index ((y * W + x) * A + a) and channel a*K + k -> class k, matching the anchors.
    """
    check_levels(class_outputs, box_outputs, num_classes)
    batch = class_outputs[0].shape[0]
    cls_levels = [c.permute(0, 2, 3, 1).reshape(batch, -1, num_classes) for c in class_outputs]
    box_levels = [b.permute(0, 2, 3, 1).reshape(batch, -1, 4) for b in box_outputs]
    return torch.cat(cls_levels, 1), torch.cat(box_levels, 1)
