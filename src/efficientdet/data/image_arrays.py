"""In-memory images (numpy arrays, tensors) as dense uint8 RGB ``[3, H, W]`` tensors, and
:class:`ImageError`, the one error every image loader raises (:mod:`.images` re-exports it).

"Dense" means one block of memory in CHW or in HWC (channels-last) order (:func:`is_dense`).
HWC is what the decoders write and what torch's antialiased uint8 resize reads fastest, so
arrays are copied once in HWC order and never transposed here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

__all__ = [
    "ImageError", "check_array_layout", "check_size", "dense_layout", "from_numpy", "from_tensor", "is_dense",
    "to_rgb_uint8",
]  # fmt: skip

_NUMPY_DTYPES = frozenset(np.dtype(t) for t in (np.uint8, np.uint16, np.float16, np.float32, np.float64))


class ImageError(ValueError):
    """An image that cannot be loaded; ``name`` says which image, ``problem`` what is wrong.

    For an image refused by the ``max_pixels`` guard, ``too_large`` is True and ``pixels`` its
    pixel count when known (``size`` its "HxW"), so callers can word their own hint.
    """

    def __init__(
        self, name: str, problem: str, too_large: bool = False, pixels: int | None = None, size: str | None = None
    ) -> None:
        super().__init__(f"{name}: {problem}")
        self.name = name
        self.problem = problem
        self.too_large = too_large
        self.pixels = pixels
        self.size = size


def check_size(h: int, w: int, name: str, max_pixels: int | None) -> None:
    """An :class:`ImageError` naming ``name`` for a zero-size image or one over ``max_pixels``."""
    if h <= 0 or w <= 0:
        raise ImageError(name, f"zero-size image ({h}x{w} pixels, HxW)")
    if max_pixels is not None and h * w > max_pixels:
        raise ImageError(
            name,
            f"image has {h * w:,} pixels ({h}x{w}), more than max_pixels={max_pixels:,}; "
            "if you trust it, pass a larger max_pixels (or None), e.g. via "
            "PreprocessConfig.max_input_pixels",
            too_large=True,
            pixels=h * w,
            size=f"{h}x{w}",
        )


def check_array_layout(array: Any, name: str, channels_last: bool) -> tuple[int, int]:
    """Validate a HW / HWC (numpy) or HW / CHW (tensor) shape; return ``(h, w)``."""
    shape = tuple(array.shape)
    kind = "array" if channels_last else "tensor"
    expected = "[H, W] or [H, W, C]" if channels_last else "[H, W] or [C, H, W]"
    if len(shape) == 2:
        return shape[0], shape[1]
    if len(shape) == 4 and shape[3 if channels_last else 1] in (1, 3, 4):
        raise ImageError(name, f"unsupported {kind} shape {shape}: a batch of {shape[0]} images? pass a list of them, "
                               "e.g. list(batch)")  # fmt: skip
    if len(shape) != 3:
        raise ImageError(name, f"unsupported {kind} shape {shape}; expected {expected} with C in 1, 3, 4")
    c, other = (shape[2], shape[0]) if channels_last else (shape[0], shape[2])
    if c not in (1, 3, 4):
        hint = ""
        if other in (1, 3, 4):
            fix = ".transpose(1, 2, 0)" if channels_last else ".permute(2, 0, 1)"
            hint = f"; reorder it with {fix}"
        raise ImageError(name, f"unsupported {kind} shape {shape}; expected {expected} with C in 1, 3, 4{hint}")
    return (shape[0], shape[1]) if channels_last else (shape[1], shape[2])


def from_numpy(array: np.ndarray, name: str, max_pixels: int | None) -> torch.Tensor:
    """An ``[H, W]`` / ``[H, W, C]`` array -> our own dense uint8 ``[3, H, W]`` (HWC memory)."""
    h, w = check_array_layout(array, name, channels_last=True)
    check_size(h, w, name, max_pixels)
    if array.dtype.newbyteorder("=") not in _NUMPY_DTYPES:
        raise ImageError(name, f"unsupported dtype {array.dtype}; expected uint8, uint16 or float in 0..1")
    if array.ndim == 2:
        array = array[:, :, None]
    elif array.shape[2] == 4:
        array = array[:, :, :3]  # drop alpha before copying
    # One copy does it all: our own memory, native byte order (Pillow's I;16B is big-endian),
    # positive strides and a writable buffer (np.asarray of a PIL image is read-only, which
    # torch.from_numpy warns about). Floats become float32 here rather than in a later copy.
    # HWC order stays (a plain copy, no transpose): see load_image.
    dtype = np.dtype(np.float32) if array.dtype.kind == "f" else array.dtype.newbyteorder("=")
    tensor = torch.from_numpy(np.array(array, dtype=dtype, order="C")).permute(2, 0, 1)
    return to_rgb_uint8(tensor, name)


def from_tensor(tensor: torch.Tensor, name: str, max_pixels: int | None) -> torch.Tensor:
    """An ``[H, W]`` / ``[C, H, W]`` tensor -> dense uint8 ``[3, H, W]`` (as is when it already is one)."""
    h, w = check_array_layout(tensor, name, channels_last=False)
    check_size(h, w, name, max_pixels)
    return to_rgb_uint8(tensor[None] if tensor.ndim == 2 else tensor, name)


def to_rgb_uint8(image: torch.Tensor, name: str) -> torch.Tensor:
    """``[C, H, W]`` (C in 1, 3, 4) uint8 / uint16 / float -> dense uint8 ``[3, H, W]``."""
    if image.shape[0] == 4:
        image = image[:3]  # drop alpha first: no point converting it
    if image.dtype == torch.uint16:
        image = TF.to_dtype(image, torch.uint8, scale=True)  # x >> 8: 65535 -> 255, 32768 -> 128
    elif image.is_floating_point():
        image = _float_to_uint8(image, name)
    elif image.dtype != torch.uint8:
        raise ImageError(
            name,
            f"unsupported dtype {str(image.dtype).removeprefix('torch.')}; "
            "expected uint8, uint16 or float in 0..1",
        )
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)  # grayscale: expanded after conversion, the cheap side
    return dense_layout(image)


def is_dense(image: torch.Tensor) -> bool:
    """Whether a ``[3, H, W]`` tensor's memory is one block in CHW or in HWC (channels-last) order,
    the two layouts :func:`load_image` returns."""
    return image.is_contiguous() or image.permute(1, 2, 0).is_contiguous()


def dense_layout(image: torch.Tensor) -> torch.Tensor:
    """``image`` if :func:`is_dense`, else a copy in HWC memory order (views of other tensors,
    expanded grayscale, a dropped alpha channel)."""
    if is_dense(image):
        return image
    return image.permute(1, 2, 0).contiguous().permute(2, 0, 1)


def _float_to_uint8(image: torch.Tensor, name: str) -> torch.Tensor:
    image = image.float()  # no copy for float32; half/double become float32 once
    lo, hi = torch.aminmax(image)
    lo_v, hi_v = float(lo), float(hi)
    if not (np.isfinite(lo_v) and np.isfinite(hi_v)):
        raise ImageError(name, "float image contains NaN or infinite values")
    # Small overshoot (e.g. from bicubic resampling) is clipped; far outside 0..1 is almost
    # surely 0..255 data, which clipping would silently turn white.
    if lo_v < -0.5 or hi_v > 1.5:
        raise ImageError(
            name,
            f"float image values span {lo_v:g}..{hi_v:g}, expected 0..1; "
            "divide by 255 or pass a uint8 array",
        )
    # Round to nearest (torchvision's to_dtype truncates: 0.5 -> 127); clamp makes a new tensor.
    return image.clamp(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)
