"""The benchmark's inputs: the images it times and the int8 backends' calibration images."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from . import INT8_BACKENDS
from .measure import synthetic_images
from .pipelines import image_files

__all__ = ["benchmark_images", "calibration_images"]


def benchmark_images(
    images: str | os.PathLike[str] | None, work: Path, sizes: list[int]
) -> tuple[list[Path], str]:
    """(image files, their description): the files in ``images``, or synthetic JPEGs written to ``work``."""
    if images is not None:
        from ..data.images import load_image

        files = image_files(images)
        # Only the first files are timed: a folder of 200 photos read as if all were measured.
        used = min(len(files), max(sizes))
        for path in files[:used]:  # a corrupt one stopped the run once the first backend was measured
            load_image(path)
        return files, (
            f"{os.fspath(images)}: the first {used} of its {len(files)} image files by name "
            "(a batch of N: the first N, repeated where the folder has fewer)"
        )
    files = synthetic_images(work / "images", max(max(sizes), 2))
    return files, f"{len(files)} synthetic COCO-sized JPEGs (quality 90)"


def calibration_images(
    backends: Sequence[str], calibration: str | os.PathLike[str] | None, files: list[Path]
) -> list[Path]:
    """The int8 backends' calibration images (checked before any model is built): up to
    ``export --calibration-images``'s default of them, as ``export --int8`` takes."""
    if not set(INT8_BACKENDS) & set(backends):
        return []
    from ..export.calibration import DEFAULT_CALIBRATION_IMAGES, calibration_files, evenly_spaced

    if calibration is None:  # all of --images were decoded and kept: a big folder ran out of memory
        return evenly_spaced(files, DEFAULT_CALIBRATION_IMAGES)
    return calibration_files(calibration, DEFAULT_CALIBRATION_IMAGES)
