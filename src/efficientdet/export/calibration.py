"""Calibration images for int8 quantization: picked from a dataset or a folder of images.

``--calibration DATA`` takes anything ``train``/``eval`` read (COCO JSON, VOC, YOLO) or a plain
folder of images. The images are spread evenly over the (sorted) set rather than taken from its
start, so one scene or one camera at the head of a dataset does not set every range. Each image is
decoded as the detectors decode it for the model's input size (large JPEGs at a reduced DCT
scale, :func:`~efficientdet.data.images.load_for_model`), so the ranges are observed on the
pixels the int8 model is later fed.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..data.common import IMAGE_EXTENSIONS
from ..data.images import ImageError, load_for_model
from ..data.reduced import DecodedImage

__all__ = ["calibration_files", "calibration_groups", "evenly_spaced", "load_calibration_images"]

# ``export --calibration-images``'s default, also the benchmark's number of calibration images.
DEFAULT_CALIBRATION_IMAGES = 100


def calibration_files(source: str | os.PathLike[str], count: int) -> list[Path]:
    """Up to ``count`` image paths of ``source``, evenly spaced over the sorted set.

    ``source``: a dataset (whatever ``read_dataset`` detects; its train split where it has
    splits) or a folder of images. Errors name
    ``--calibration`` and what is wrong (missing, unreadable annotations, no images).
    """
    from ..data.formats import read_split

    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"--calibration {path}: no such file or folder")
    if count < 1:
        raise ValueError(f"--calibration-images must be >= 1, got {count}")
    files: list[Path]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # box problems do not matter for calibration
            # the train split where the dataset has one (as train reads it): calibrating on the
            # val photos made `eval --compare` score the int8 model on its own calibration set
            index = read_split(path, "train", allow_outside_root=True)
        files = sorted({r.image_path for r in index.records})
    except (ValueError, OSError) as err:
        if not path.is_dir():
            raise ValueError(f"--calibration {path}: {err}") from None
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"--calibration {path}: no images (expected a dataset or a folder of {', '.join(IMAGE_EXTENSIONS)})")
    return evenly_spaced(files, count)


def evenly_spaced(files: list[Path], count: int) -> list[Path]:
    """Up to ``count`` of ``files``, evenly spaced over the list (all of them if no more)."""
    if len(files) <= count:
        return files
    step = len(files) / count
    return [files[int(i * step)] for i in range(count)]


def calibration_groups(images: Sequence[Any], size: int) -> list[list[Any]]:
    """``images`` in groups of exactly ``size`` (a graph with a static batch takes no other), the
    last group filled up with images from the start, so that none is left out."""
    groups = [list(images[i : i + size]) for i in range(0, len(images), size)]
    if groups and len(groups[-1]) < size:
        groups[-1] += [images[i % len(images)] for i in range(size - len(groups[-1]))]
    return groups


def load_calibration_images(
    files: list[Path],
    max_pixels: int | None = None,
    warn: Callable[[str], None] | None = None,
    image_size: tuple[int, int] | None = None,
) -> list[DecodedImage]:
    """uint8 [3, H, W] images of ``files`` (``image_size``: the model's input (h, w); JPEGs large
    enough for a reduced decode come back as :class:`~efficientdet.data.reduced.ReducedImage`,
    as every detector decodes them for that size); unreadable ones are skipped (and reported
    through ``warn``); a ValueError if none can be read."""
    images: list[DecodedImage] = []
    bad: list[str] = []
    for path in files:
        try:
            images.append(load_for_model(path, image_size, max_pixels=max_pixels))
        except (ImageError, OSError) as err:
            bad.append(str(err) if isinstance(err, ImageError) else f"{path}: {err}")
    if bad and images and warn is not None:
        warn(f"skipped {len(bad)} unreadable calibration image(s), e.g. {bad[0]}")
    if not images:
        first = bad[0] if bad else "none given"
        raise ValueError(f"--calibration: none of the {len(files)} images could be read ({first})")
    return images
