"""Load images from files, PIL images, numpy arrays or tensors as uint8 RGB ``[3, H, W]``.

Files are decoded by torchvision (libjpeg-turbo / libwebp / giflib) where it handles the
format and its EXIF orientation, and by Pillow otherwise (PNG included: torchvision 0.29's
decode_png crashes the process with a segmentation fault on a PNG whose pixel data is
corrupt, e.g. one flipped byte in an IDAT chunk). Every failure is an :class:`ImageError`
naming the image and the problem. The format is read from the file's content, not its
extension, so a PNG named ``.jpg`` loads.

Decompression bombs: the pixel count is read from the header and checked against
``max_pixels`` before anything is decoded. ``max_pixels`` is the one limit to raise: a file
over Pillow's own process-wide limit (``PIL.Image.MAX_IMAGE_PIXELS``, ~179 MP) is opened
anyway when ``max_pixels`` allows it (or is None).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import struct
import warnings
from collections.abc import Iterator
from typing import BinaryIO, Union

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps
from torchvision.io import ImageReadMode, decode_image

from ..inference.preprocess import reduction_factor
from .image_arrays import (
    ImageError,
    check_array_layout,
    check_size,
    dense_layout,
    from_numpy,
    from_tensor,
    is_dense,
)
from .reduced import DecodedImage, ReducedImage

__all__ = ["ImageError", "ImageSource", "image_size_of", "is_dense", "load_for_model", "load_image"]

ImageSource = Union[str, "os.PathLike[str]", Image.Image, np.ndarray, torch.Tensor]

DEFAULT_MAX_PIXELS = 100_000_000
_EXIF_ORIENTATION = 0x0112
# torchvision's decode_image honours EXIF orientation only for JPEG (and PNG); WebP/GIF with
# a rotation tag go through Pillow instead (checked with torchvision 0.29). PNG always goes
# through Pillow: see the module docstring (libpng errors in decode_png are a segfault).
_TV_EXIF_FORMATS = frozenset({"JPEG"})
_TV_FORMATS = _TV_EXIF_FORMATS | {"WEBP", "GIF"}
# File signatures: to tell "not an image" from "an image whose header is broken".
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
    (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
)
_PIL_16BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def load_image(
    source: ImageSource, name: str | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> torch.Tensor:
    """Load ``source`` as a dense uint8 RGB tensor ``[3, H, W]`` (see :func:`is_dense` for its memory).

    ``source`` is a file path; a PIL image (any mode; EXIF orientation is applied); a numpy
    array ``[H, W]`` or ``[H, W, C]``; or a tensor ``[H, W]`` or ``[C, H, W]`` (C in 1, 3, 4).
    Arrays and tensors may be uint8, uint16 (0..65535) or float (0..1). Grayscale is repeated
    to 3 channels, alpha is dropped, 16-bit is scaled to 8-bit. Tensors stay on their device;
    a dense uint8 RGB tensor is returned as is (sharing memory). Files, PIL images and arrays
    come back channels-last in memory (strides ``(1, 3W, 3)``), as the decoders write them:
    torch's antialiased uint8 resize reads that layout fastest, and reordering would cost a
    copy; ``.contiguous()`` gives CHW memory where a caller needs it. ``name`` labels the
    image in errors (default: the path, or "image"). Images with more than ``max_pixels`` pixels are refused (``None``: no limit);
    for files the size is read from the header before anything is decoded.

    Raises:
        ImageError: missing, empty, corrupt or truncated file; unsupported format, mode,
            shape or dtype; zero-size or over-limit image.
    """
    if isinstance(source, (str, os.PathLike)):
        return load_file(source, name or os.fspath(source), max_pixels)
    label = name or "image"
    if isinstance(source, Image.Image):
        return _from_pil(source, label, max_pixels)
    if isinstance(source, np.ndarray):
        return from_numpy(source, label, max_pixels)
    if isinstance(source, torch.Tensor):
        return from_tensor(source, label, max_pixels)
    raise ImageError(
        label,
        f"unsupported image source type {type(source).__name__}; expected a path, PIL image, "
        "numpy array or torch tensor",
    )


def load_for_model(
    source: ImageSource | ReducedImage,
    image_size: tuple[int, int] | None,
    name: str | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> DecodedImage:
    """:func:`load_image` for a model whose input is ``image_size`` (h, w): a JPEG file at least
    3x the size it is resized to (a 1/2 decode is still 1.5x it) is decoded at 1/2, 1/4 or 1/8
    scale (:func:`~efficientdet.inference.preprocess.reduction_factor`) and comes back as a
    :class:`ReducedImage` (its pixels, full size and factor); anything else as
    :func:`load_image` returns it. ``image_size=None``: always :func:`load_image`.

    Detectors accept both kinds and give boxes in the full image's pixels. The reduced
    decode gives the model slightly different pixels than a full decode and resize (libjpeg's
    scaled inverse DCT before the bilinear filter) for much less decode time (docs/usage.md).
    """
    if isinstance(source, ReducedImage):
        return source
    if image_size is not None and isinstance(source, (str, os.PathLike)):
        return load_file_for(source, image_size, name or os.fspath(source), max_pixels)
    return load_image(source, name, max_pixels)


@contextlib.contextmanager
def quiet_decoders(quiet: bool = False) -> Iterator[None]:
    """Silence the decoders' known warnings, unless the caller already did (``quiet``)."""
    if quiet:
        yield
        return
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its decoders (in favour of TorchCodec) with a warning on
        # every call; we know, and fall back to Pillow if they go away.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")
        # We apply our own pixel limit; Pillow's warning threshold (~89 MP) is lower.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def image_size_of(source: ImageSource, name: str | None = None) -> tuple[int, int]:
    """``(height, width)`` that :func:`load_image` would return, from the header for files.

    EXIF rotations by 90 degrees are taken into account. Raises ImageError like load_image.
    """
    if isinstance(source, (str, os.PathLike)):
        label = name or os.fspath(source)
        with _open_file(source, label) as f:
            return _oriented_hw(_open_header(f, label, max_pixels=None))
    label = name or "image"
    if isinstance(source, Image.Image):
        return _oriented_hw(source)
    if isinstance(source, np.ndarray):
        return check_array_layout(source, label, channels_last=True)
    if isinstance(source, torch.Tensor):
        return check_array_layout(source, label, channels_last=False)
    raise ImageError(label, f"unsupported image source type {type(source).__name__}")


# --------------------------------------------------------------------------- files


def load_file(path: str | os.PathLike[str], name: str, max_pixels: int | None, quiet: bool = False) -> torch.Tensor:
    """``quiet``: the caller has silenced the decoders' warnings (see :func:`load_images`)."""
    data = _read_file(path, name)
    return _decode(data, _open_header(data, name, max_pixels, quiet), name, max_pixels, quiet)


def load_file_for(
    path: str | os.PathLike[str], image_size: tuple[int, int] | None, name: str, max_pixels: int | None, quiet: bool = False
) -> DecodedImage:
    """:func:`load_file`, or for a JPEG large enough for ``image_size`` (see :func:`load_for_model`;
    None: never), a :class:`ReducedImage` decoded at 1/2, 1/4 or 1/8 scale."""
    data = _read_file(path, name)
    header = _open_header(data, name, max_pixels, quiet)
    if image_size is not None and header.format == "JPEG":
        size = _oriented_hw(header)
        factor = reduction_factor(size, image_size)
        # Pillow alone decodes the reduced scale; an application that let Pillow accept truncated
        # files would get a partly grey photo from it, so those go through torchvision's check.
        if factor > 1 and not ImageFile.LOAD_TRUNCATED_IMAGES:
            # Pillow picks the largest scale whose result still covers the requested size.
            header.draft("RGB", (max(1, header.width // factor), max(1, header.height // factor)))
            with quiet_decoders(quiet):
                pixels = _from_pil(header, name, max_pixels)
            if tuple(pixels.shape[1:]) == (-(-size[0] // factor), -(-size[1] // factor)):
                return ReducedImage(pixels, size, factor)
            # Another scale than asked for (not seen with libjpeg-turbo): decode in full.
            header = _open_header(data, name, max_pixels, quiet)
    return _decode(data, header, name, max_pixels, quiet)


def _decode(data: bytes, header: Image.Image, name: str, max_pixels: int | None, quiet: bool) -> torch.Tensor:
    """A file's bytes, whose header Pillow has read, as a uint8 [3, H, W] tensor."""
    fmt = header.format or "unknown"
    orientation = _orientation(header)
    if fmt in _TV_EXIF_FORMATS or (fmt in _TV_FORMATS and orientation == 1):
        try:
            with quiet_decoders(quiet):
                image = decode_image(
                    torch.frombuffer(bytearray(data), dtype=torch.uint8),
                    mode=ImageReadMode.RGB,
                    apply_exif_orientation=True,
                )
        except RuntimeError as exc:
            # Pillow reports truncation too (as an OSError), unless the application has set
            # ImageFile.LOAD_TRUNCATED_IMAGES, in which case it would hand back a partly grey
            # image: then torchvision's verdict is final.
            if ImageFile.LOAD_TRUNCATED_IMAGES:
                raise ImageError(name, f"corrupt or truncated {fmt} file ({_tv_reason(exc)})") from exc
            return _from_pil(header, name, max_pixels, tv_error=_tv_reason(exc))
        if image.ndim == 4:  # animated GIF: [frames, 3, H, W]
            image = image[0]
        return dense_layout(image)  # the decoders write HWC memory: kept (see load_image)
    return _from_pil(header, name, max_pixels)


def _open_file(path: str | os.PathLike[str], name: str) -> BinaryIO:
    try:
        f = open(path, "rb")  # noqa: SIM115 - the caller closes it
    except FileNotFoundError:
        raise ImageError(name, "file not found") from None
    except IsADirectoryError:
        raise ImageError(name, "is a directory, not an image file") from None
    except PermissionError:
        raise ImageError(name, "cannot read file (permission denied)") from None
    except OSError as exc:
        raise ImageError(name, f"cannot read file ({exc.strerror or exc})") from exc
    if os.fstat(f.fileno()).st_size == 0:
        f.close()
        raise ImageError(name, "file is empty (0 bytes)")
    return f


def _read_file(path: str | os.PathLike[str], name: str) -> bytes:
    with _open_file(path, name) as f:
        try:
            return f.read()
        except OSError as exc:
            raise ImageError(name, f"cannot read file ({exc.strerror or exc})") from exc


def _open_header(data: bytes | BinaryIO, name: str, max_pixels: int | None, quiet: bool = False) -> Image.Image:
    """Lazily open ``data`` (file bytes or an open file) with Pillow: parses the header only."""
    fp = io.BytesIO(data) if isinstance(data, bytes) else data
    header: Image.Image
    try:
        with quiet_decoders(quiet):
            header = Image.open(fp)
    except Image.DecompressionBombError as exc:
        header = _open_over_pillow_limit(fp, name, max_pixels, str(exc))
    except Image.UnidentifiedImageError:
        raise ImageError(name, _unidentified(fp)) from None
    except Exception as exc:  # Pillow raises assorted types (SyntaxError, struct.error, ...)
        raise ImageError(name, f"corrupt image header ({type(exc).__name__}: {exc})") from exc
    check_size(header.height, header.width, name, max_pixels)
    return header


def _open_over_pillow_limit(fp: BinaryIO, name: str, max_pixels: int | None, message: str) -> Image.Image:
    """Open a header Pillow refused as a bomb, if ``max_pixels`` allows it; else ImageError."""
    pil_limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    found = re.search(r"\((\d+) pixels\)", message)
    pixels = int(found.group(1)) if found else None
    size = f"{pixels:,} pixels" if pixels is not None else f"more than {pil_limit:,} pixels"
    if max_pixels is not None and (pixels is None or pixels > max_pixels):
        raise ImageError(
            name,
            f"image has {size} (from its header), more than max_pixels={max_pixels:,} "
            "(a decompression-bomb guard); if you trust it, pass a larger max_pixels (or None), "
            "e.g. via PreprocessConfig.max_input_pixels",
            too_large=True,
            pixels=pixels,
        )
    try:
        header = _open_unchecked(fp)
    except Exception as exc:
        header, message = None, f"{type(exc).__name__}: {exc}"
    if header is None:
        raise ImageError(name, f"image has {size} (from its header) and cannot be opened past Pillow's limit ({message})")
    return header


def _open_unchecked(fp: BinaryIO) -> Image.Image | None:
    """``Image.open`` without Pillow's process-wide pixel limit; None if no plugin accepts it.

    The limit check lives in ``Image.open`` itself and reads the global
    ``Image.MAX_IMAGE_PIXELS``; changing that would affect other threads, so the format
    plugins are tried directly, in Pillow's order (the caller applies ``max_pixels``).
    """
    Image.init()
    fp.seek(0)
    prefix = fp.read(16)
    for fmt in Image.ID:
        factory, accept = Image.OPEN[fmt]
        ok = accept is None or accept(prefix)
        if not ok or isinstance(ok, str):  # a str is Pillow's "maybe, but unsupported"
            continue
        fp.seek(0)
        try:
            return factory(fp, "")
        except (SyntaxError, IndexError, TypeError, struct.error):
            continue
    return None


def _unidentified(fp: BinaryIO) -> str:
    """Why Pillow could not identify the file: not an image, or a broken header."""
    fp.seek(0)
    head = fp.read(32)
    fmt = next((f for magic, f in _MAGIC if head.startswith(magic)), None)
    if fmt is None and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        fmt = "WEBP"
    if fmt is None:
        return "not an image file (unrecognised or unsupported format)"
    if fmt == "PNG" and len(head) >= 24 and head[12:16] == b"IHDR":
        w, h = struct.unpack(">II", head[16:24])
        if w == 0 or h == 0:
            return f"zero-size image ({h}x{w} pixels, HxW, in its PNG header)"
    return f"corrupt {fmt} header (the file starts like a {fmt} image but its header cannot be parsed)"


def _tv_reason(exc: RuntimeError) -> str:
    # torchvision prefixes messages with "func, /path/to/file.cpp:123, "; keep the reason.
    return re.split(r"\.cpp:\d+, ", str(exc))[-1].strip()


# --------------------------------------------------------------------------- PIL


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a malformed EXIF block must not make a decodable image fail
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _oriented_hw(image: Image.Image) -> tuple[int, int]:
    # Orientations 5-8 involve a 90 degree turn, swapping height and width.
    h, w = image.height, image.width
    return (w, h) if _orientation(image) >= 5 else (h, w)


def _from_pil(
    image: Image.Image, name: str, max_pixels: int | None, tv_error: str | None = None
) -> torch.Tensor:
    """Decode (if lazy) and convert a PIL image; the size check runs before decoding."""
    check_size(image.height, image.width, name, max_pixels)
    try:
        if _orientation(image) != 1:
            image = ImageOps.exif_transpose(image)  # returns a new image: caller's is untouched
        image.load()
        mode = image.mode
        if mode in _PIL_16BIT_MODES:
            # Pillow's convert("RGB") clips 16-bit values at 255 instead of scaling them.
            array: np.ndarray = np.asarray(image).astype(np.uint16)
        elif mode == "I":  # 32-bit int: Pillow's representation of 16-bit data
            array = np.clip(np.asarray(image), 0, 65535).astype(np.uint16)
        elif mode in ("F", "RGB", "L"):  # F (float): same 0..1 convention as float arrays
            array = np.asarray(image)
        else:
            if mode == "P" or "A" in mode or "a" in mode:
                # Via RGBA: palette transparency and premultiplied modes convert cleanly.
                image = image.convert("RGBA")
            array = np.asarray(image.convert("RGB"))
    except Exception as exc:  # decoder errors come as OSError, ValueError, SyntaxError, ...
        fmt = f"{image.format} " if image.format else ""
        detail = f"{type(exc).__name__}: {exc}"
        if tv_error is not None:
            detail = f"torchvision: {tv_error}; Pillow: {detail}"
        raise ImageError(name, f"corrupt, truncated or unsupported {fmt}image ({detail})") from exc
    return from_numpy(array, name, max_pixels)
