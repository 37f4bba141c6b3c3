"""Model input preparation: the one resize geometry and the one normalise-and-pad.

Training, evaluation, ``Detector``, the ONNX backend and the benchmark all build model inputs
here. The image is resized keeping its aspect ratio (:func:`fit_size`), normalised as
``(x - mean) / std`` (0..255 units) and kept at the top-left; the rest of the input is 0,
i.e. the mean colour after normalising, for every variant (as the official pipeline pads). A
point or box in model pixels maps back to the original image as ``original = model / scale``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchvision.transforms.v2.functional as TF

from efficientdet.config import PreprocessConfig
from efficientdet.data.reduced import DecodedImage, ReducedImage, full_size, image_pixels

__all__ = [
    "check_image", "check_size", "fit_size", "normalize_batch", "preprocess_batch", "reduction_factor", "resize_and_pad",
    "resize_to_fit",
]  # fmt: skip


def fit_size(src_hw: tuple[int, int], dst_hw: tuple[float, float]) -> tuple[float, int, int]:
    """Aspect-preserving fit of ``src_hw`` (H, W) into ``dst_hw`` (h, w): ``(scale, new_h, new_w)``.

    ``scale = min(h / H, w / W)``, ``new = round(side * scale)`` clamped to [1, target side].
    ``dst_hw`` may be fractional (the training scale jitter).
    """
    src_h, src_w = int(src_hw[0]), int(src_hw[1])
    h, w = dst_hw
    scale = min(h / src_h, w / src_w)
    # Clamp: float rounding must neither overflow the canvas nor collapse a thin image to 0 px.
    new_h = int(min(int(h), max(1, round(src_h * scale))))
    new_w = int(min(int(w), max(1, round(src_w * scale))))
    return scale, new_h, new_w


# A reduced decode must still be this much larger than the fit: the bilinear, antialiased resize
# that follows then does the smoothing, as it does from a full decode. Used directly (an exact
# fit), libjpeg's scaled pixels are sharper than the resize's and moved detections several
# times more (measured in docs/usage.md).
REDUCED_DECODE_MARGIN = 1.5


def reduction_factor(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> int:
    """The largest of 1, 2, 4, 8 by which an image of ``src_hw`` (H, W) can be decoded smaller
    (JPEG's 1/2, 1/4, 1/8 decodes give ``ceil(side / k)``) and still be at least
    ``REDUCED_DECODE_MARGIN`` times the size :func:`fit_size` resizes it to for ``dst_hw``."""
    _, new_h, new_w = fit_size(src_hw, dst_hw)
    need_h, need_w = REDUCED_DECODE_MARGIN * new_h, REDUCED_DECODE_MARGIN * new_w
    factor = 1
    while factor < 8 and -(-src_hw[0] // (2 * factor)) >= need_h and -(-src_hw[1] // (2 * factor)) >= need_w:
        factor *= 2
    return factor


def resize_to_fit(image: torch.Tensor, dst_hw: tuple[float, float]) -> tuple[torch.Tensor, float]:
    """uint8 ``[3, H, W]`` -> (uint8 ``[3, new_h, new_w]`` fitted into ``dst_hw``, scale).

    Bilinear, antialiased, still uint8: torch has a native uint8 antialias kernel on CPU, so the
    only float copy later made is of the small, resized image.
    """
    scale, new_h, new_w = fit_size((int(image.shape[1]), int(image.shape[2])), dst_hw)
    if (new_h, new_w) != tuple(image.shape[1:]):
        image = TF.resize(image, [new_h, new_w], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return image, scale


def normalize_batch(
    images: torch.Tensor, content_sizes: Sequence[tuple[int, int]], mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """uint8 ``[N, 3, h, w]`` canvases with content ``[:h_i, :w_i]`` at the top-left -> float32
    ``[N, 3, h, w]``: content normalised, everything else 0 (what :func:`preprocess_batch` gives).

    The training loader's canvases are padded with anything; only the content is read.
    """
    if images.ndim != 4 or images.shape[1] != 3 or len(content_sizes) != images.shape[0]:
        raise ValueError(f"expected [N, 3, h, w] images and N content sizes, got {tuple(images.shape)} and {len(content_sizes)}")
    mean_t, std_t = _stats(mean, std, images.device)
    out = (images.float() - mean_t) / std_t
    for i, (ch, cw) in enumerate(content_sizes):
        _zero_outside(out[i], ch, cw)
    return out


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
    check_image(image, "image")
    h, w = check_size(image_size)
    out = torch.empty((3, h, w), dtype=torch.float32, device=image.device)
    mean_t, std_t = _stats(mean, std, image.device)
    return out, _resize_normalize_into(image, out, mean_t, std_t)


def preprocess_batch(
    images: Sequence[DecodedImage], config: PreprocessConfig
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    """Resize, normalise and pad uint8 ``[3, H_i, W_i]`` images into one batch.

    Returns ``(batch [N, 3, h, w] float32, scales [N] float32, original sizes [(H_i, W_i)])``
    with ``(h, w) = config.image_size``; all on the device of the first image. A
    :class:`~efficientdet.data.reduced.ReducedImage` contributes its pixels, its full size and
    a scale per full-image pixel (its own scale / its factor), so boxes map back to the full image.
    """
    h, w = check_size(config.image_size)
    for i, image in enumerate(images):
        check_image(image_pixels(image), f"image #{i}")
    device = image_pixels(images[0]).device if len(images) else torch.device("cpu")
    # One buffer: each image writes its content region and zeroes only the rest (filling all
    # of it with zeros first would write the content region twice).
    batch = torch.empty((len(images), 3, h, w), dtype=torch.float32, device=device)
    mean_t, std_t = _stats(config.mean, config.std, device)
    scales = torch.empty(len(images), dtype=torch.float32)
    for i, image in enumerate(images):
        factor = image.factor if isinstance(image, ReducedImage) else 1
        scales[i] = _resize_normalize_into(image_pixels(image).to(device), batch[i], mean_t, std_t) / factor
    return batch, scales.to(device), [full_size(image) for image in images]


def _resize_normalize_into(
    image: torch.Tensor, out: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
) -> float:
    """Write the resized, normalised ``image`` into the top-left of ``out`` [3, h, w] and
    zeros into the rest (``out``'s previous contents do not matter)."""
    image, scale = resize_to_fit(image, (int(out.shape[1]), int(out.shape[2])))
    new_h, new_w = int(image.shape[1]), int(image.shape[2])
    region = out[:, :new_h, :new_w]
    region.copy_(image)  # uint8 -> float32 in place
    region.sub_(mean).div_(std)
    _zero_outside(out, new_h, new_w)
    return scale


def _zero_outside(out: torch.Tensor, content_h: int, content_w: int) -> None:
    """Zero ``out`` [3, h, w] outside its top-left ``content_h`` x ``content_w`` region (the padding)."""
    out[:, content_h:, :].zero_()
    out[:, :content_h, content_w:].zero_()


def _stats(mean: Sequence[float], std: Sequence[float], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values (RGB), got {len(mean)} and {len(std)}")
    if any(s <= 0 for s in std):
        raise ValueError(f"std values must be positive, got {tuple(std)}")
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(3, 1, 1)
    return mean_t, std_t


def check_size(image_size: tuple[int, int]) -> tuple[int, int]:
    """``(height, width)`` as two positive ints, or a ValueError."""
    if len(image_size) != 2 or min(image_size) <= 0:
        raise ValueError(f"image_size must be (height, width) with positive sides, got {image_size}")
    return int(image_size[0]), int(image_size[1])


def check_image(image: torch.Tensor, name: str) -> None:
    """A uint8 ``[3, H, W]`` tensor with non-zero sides, or an error naming ``name``."""
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{name}: expected a uint8 [3, H, W] tensor, got {type(image).__name__}; see load_image")
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(
            f"{name}: expected a uint8 [3, H, W] tensor, got {image.dtype} {tuple(image.shape)}; "
            "convert it with efficientdet.data.images.load_image"
        )
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise ValueError(f"{name}: zero-size image {tuple(image.shape)}")
