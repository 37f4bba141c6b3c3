"""A photo decoded at a fraction of its size, for a model that would shrink it anyway.

JPEG stores 8x8 blocks of frequencies; libjpeg can reconstruct each block at 4x4, 2x2 or 1x1
pixels (its "DCT scaling"), skipping most of the inverse transform and the full-size buffer.
When a detector's input is at most half a photo's size, decoding at 1/2, 1/4 or 1/8 and then
resizing gives the model nearly the same pixels for a fraction of the decode time (measured
in docs/usage.md). :func:`efficientdet.data.images.load_for_model` makes
these; every detector's ``prepare`` accepts them next to plain tensors and maps boxes back to
the full photo's pixels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["DecodedImage", "ReducedImage", "full_size", "image_pixels", "require_full"]


@dataclass(frozen=True)
class ReducedImage:
    """``pixels``: uint8 ``[3, ceil(H / factor), ceil(W / factor)]``; ``size``: the full photo's
    ``(H, W)``; ``factor``: 2, 4 or 8. Pixel ``(y, x)`` covers the photo's rows
    ``[factor * y, factor * (y + 1))`` and columns likewise, so a point maps back as
    ``full = factor * reduced`` (the last row and column may reach past the photo's edge)."""

    pixels: torch.Tensor
    size: tuple[int, int]
    factor: int

    def __post_init__(self) -> None:
        h, w = self.size
        expected = (3, -(-h // self.factor), -(-w // self.factor))
        if tuple(self.pixels.shape) != expected or self.factor not in (2, 4, 8):
            raise ValueError(
                f"ReducedImage: pixels {tuple(self.pixels.shape)} do not reduce a {h}x{w} (HxW) image "
                f"by {self.factor} (expected {expected}, factor 2, 4 or 8)"
            )

    def to(self, device: str | torch.device) -> ReducedImage:
        """The same image with its pixels on ``device``."""
        return dataclasses.replace(self, pixels=self.pixels.to(device))

    def cpu(self) -> ReducedImage:
        return self.to("cpu")


DecodedImage = torch.Tensor | ReducedImage


def image_pixels(image: DecodedImage) -> torch.Tensor:
    """The uint8 ``[3, h, w]`` pixels of a decoded image (reduced or not)."""
    return image.pixels if isinstance(image, ReducedImage) else image


def full_size(image: DecodedImage) -> tuple[int, int]:
    """``(H, W)`` of the full image: a reduced image's original size, else the tensor's."""
    if isinstance(image, ReducedImage):
        return image.size
    return int(image.shape[-2]), int(image.shape[-1])


def require_full(images: Sequence[DecodedImage], who: str) -> list[torch.Tensor]:
    """``images`` as tensors, or a TypeError: ``who`` (tiling, flips) needs full decodes."""
    if any(isinstance(image, ReducedImage) for image in images):
        raise TypeError(
            f"{who} needs fully decoded images (load_image), got a ReducedImage; its decode_size is None"
        )
    return list(images)  # type: ignore[arg-type]
