"""Model input preparation: aspect-preserving resize, normalisation, bottom/right padding.

The image content stays at the top-left of the model input, so a point or box in model
pixels maps back to the original image as ``original = model / scale``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchvision.transforms.v2.functional as TF

from efficientdet.config import PreprocessConfig

__all__ = ["preprocess_batch", "resize_and_pad"]


def resize_and_pad(
    image: torch.Tensor,
    image_size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
) -> tuple[torch.Tensor, float]:
    """Fit a uint8 ``[3, H, W]`` image into ``image_size`` (h, w); return float32 ``[3, h, w]``.

    ``scale = min(h / H, w / W)``; the image is resized (bilinear, antialiased) to
    ``(round(H * scale), round(W * scale))``, normalised as ``(x - mean) / std`` (0..255 units)
    and padded at the bottom/right with 0, i.e. the mean colour. Returns ``(tensor, scale)``.
    """
    _check_image(image, "image")
    h, w = _check_size(image_size)
    out = torch.zeros((3, h, w), dtype=torch.float32, device=image.device)
    mean_t, std_t = _stats(mean, std, image.device)
    return out, _resize_normalize_into(image, out, mean_t, std_t)


def preprocess_batch(
    images: Sequence[torch.Tensor], config: PreprocessConfig
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    """Resize, normalise and pad uint8 ``[3, H_i, W_i]`` images into one batch.

    Returns ``(batch [N, 3, h, w] float32, scales [N] float32, original sizes [(H_i, W_i)])``
    with ``(h, w) = config.image_size``; all on the device of the first image.
    """
    h, w = _check_size(config.image_size)
    for i, image in enumerate(images):
        _check_image(image, f"image #{i}")
    device = images[0].device if len(images) else torch.device("cpu")
    # One zero-filled buffer: each image writes only its content region, the rest is padding.
    batch = torch.zeros((len(images), 3, h, w), dtype=torch.float32, device=device)
    mean_t, std_t = _stats(config.mean, config.std, device)
    scales = torch.empty(len(images), dtype=torch.float32)
    sizes: list[tuple[int, int]] = []
    for i, image in enumerate(images):
        scales[i] = _resize_normalize_into(image.to(device), batch[i], mean_t, std_t)
        sizes.append((int(image.shape[1]), int(image.shape[2])))
    return batch, scales.to(device), sizes


def _resize_normalize_into(
    image: torch.Tensor, out: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
) -> float:
    """Write the resized, normalised ``image`` into the top-left of zeroed ``out`` [3, h, w]."""
    src_h, src_w = int(image.shape[1]), int(image.shape[2])
    h, w = int(out.shape[1]), int(out.shape[2])
    scale = min(h / src_h, w / src_w)
    # Clamp: float rounding must neither overflow the canvas nor collapse a thin image to 0 px.
    new_h = min(h, max(1, round(src_h * scale)))
    new_w = min(w, max(1, round(src_w * scale)))
    if (new_h, new_w) != (src_h, src_w):
        # Resize while still uint8 (torch has a native uint8 antialias kernel on CPU), so the
        # only float copy made is of the small, resized image.
        image = TF.resize(image, [new_h, new_w], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    region = out[:, :new_h, :new_w]
    region.copy_(image)  # uint8 -> float32 in place
    region.sub_(mean).div_(std)
    return scale


def _stats(mean: Sequence[float], std: Sequence[float], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values (RGB), got {len(mean)} and {len(std)}")
    if any(s <= 0 for s in std):
        raise ValueError(f"std values must be positive, got {tuple(std)}")
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(3, 1, 1)
    return mean_t, std_t


def _check_size(image_size: tuple[int, int]) -> tuple[int, int]:
    if len(image_size) != 2 or min(image_size) <= 0:
        raise ValueError(f"image_size must be (height, width) with positive sides, got {image_size}")
    return int(image_size[0]), int(image_size[1])


def _check_image(image: torch.Tensor, name: str) -> None:
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{name}: expected a uint8 [3, H, W] tensor, got {type(image).__name__}; see load_image")
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(
            f"{name}: expected a uint8 [3, H, W] tensor, got {image.dtype} {tuple(image.shape)}; "
            "convert it with efficientdet.data.images.load_image"
        )
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise ValueError(f"{name}: zero-size image {tuple(image.shape)}")
