"""Multi-level anchor boxes in the official EfficientDet order (xyxy pixels)."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor

from efficientdet.config import AnchorConfig

__all__ = ["anchors_for_config", "feature_size", "generate_anchors"]


def feature_size(size: int, level: int) -> int:
    """Side of level ``level``'s feature map: ``size`` halved ``level`` times, rounding up
    (what stride-2 convs and pools with "same" padding give)."""
    for _ in range(level):
        size = (size - 1) // 2 + 1
    return size


def generate_anchors(
    image_size: tuple[int, int],
    min_level: int,
    max_level: int,
    num_scales: int,
    aspect_ratios: Sequence[tuple[float, float]],
    anchor_scale: float,
) -> Tensor:
    """All anchors of levels ``min_level..max_level`` for an input of ``image_size`` (h, w).

    Returns [T, 4] float32 xyxy pixels, T = sum_l H_l * W_l * A (H_l = ceil(h / 2^l)) with
    A = num_scales * len(aspect_ratios). Order: level, row y, column x, then the A anchors of a
    location with index ``octave * len(aspect_ratios) + aspect`` -- the head's channel order
    (channel = anchor * K + class), so flattened head outputs line up with these anchors.
    """
    height, width = int(image_size[0]), int(image_size[1])
    if min_level > max_level or min_level < 0:
        raise ValueError(f"need 0 <= min_level <= max_level, got {min_level}..{max_level}")
    if num_scales < 1 or len(aspect_ratios) == 0:
        raise ValueError("need num_scales >= 1 and at least one aspect ratio")
    # Float64 throughout, then one cast: the official (numpy) anchors are computed that way.
    f64 = torch.float64
    octaves = torch.arange(num_scales, dtype=f64) / num_scales  # [S]
    ratios = torch.tensor([tuple(r) for r in aspect_ratios], dtype=f64)  # [R, 2] = (ax, ay)
    levels = []
    for level in range(min_level, max_level + 1):
        feat_h, feat_w = feature_size(height, level), feature_size(width, level)
        # Official: the stride of a level is image size / feature size. It is 2**level when the
        # sides are multiples of 2**level, and larger where "same" pooling rounded up
        # (Lite0 at 320: P7 is 3x3, stride 106.67).
        stride_y, stride_x = height / feat_h, width / feat_w
        base_y = anchor_scale * stride_y * 2.0**octaves  # [S]
        base_x = anchor_scale * stride_x * 2.0**octaves
        # [S, R] -> [A] with anchor = octave * R + aspect (row-major flatten).
        half_w = (base_x[:, None] * ratios[None, :, 0] / 2.0).reshape(-1)
        half_h = (base_y[:, None] * ratios[None, :, 1] / 2.0).reshape(-1)
        ys = stride_y / 2.0 + torch.arange(feat_h, dtype=f64) * stride_y
        xs = stride_x / 2.0 + torch.arange(feat_w, dtype=f64) * stride_x
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")  # [H, W], row-major = y then x
        cy, cx = cy[..., None], cx[..., None]  # broadcast against [A]
        boxes = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1)  # [H, W, A, 4]
        levels.append(boxes.reshape(-1, 4))
    return torch.cat(levels).to(torch.float32)


@functools.lru_cache(maxsize=16)
def _cached_anchors(cfg: AnchorConfig, image_size: tuple[int, int]) -> Tensor:
    return generate_anchors(
        image_size, cfg.min_level, cfg.max_level, cfg.num_scales, cfg.aspect_ratios, cfg.anchor_scale
    )


def anchors_for_config(cfg: AnchorConfig, image_size: tuple[int, int] | Sequence[int]) -> Tensor:
    """Anchors [T, 4] float32 xyxy for ``cfg`` at ``image_size`` (h, w), cached per arguments.

    Generation is cached; each call returns a fresh clone (a memcpy of at most a few MB), so the
    caller may move or modify it (e.g. ``load_state_dict`` into a buffer) without corrupting the cache.
    """
    key = (int(image_size[0]), int(image_size[1]))
    return _cached_anchors(cfg, key).clone()
