"""Decoding many images at once: a batch's files on parallel threads, chunk by chunk."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from .images import DEFAULT_MAX_PIXELS, ImageSource, load_file_for, load_for_model, quiet_decoders
from .reduced import DecodedImage, ReducedImage

__all__ = ["iter_image_chunks", "load_images"]


def load_images(
    sources: Sequence[ImageSource | ReducedImage],
    names: Sequence[str | None] | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    workers: int | None = None,
    image_size: tuple[int, int] | None = None,
) -> list[DecodedImage]:
    """:func:`~efficientdet.data.images.load_for_model` for each of ``sources`` (``names[i]``
    labels source i in errors; ``image_size`` None: full decodes, as ``load_image``), with the
    files decoded by up to ``workers`` threads (default: one per available CPU core).

    The decoders (libjpeg-turbo, libpng, Pillow's C code) release the GIL, so a batch of files
    decodes in about 1/cores of the time. Results keep the order of ``sources``; the first
    source (in that order) that fails raises its :class:`ImageError`.
    """
    names = list(names) if names is not None else [None] * len(sources)
    if len(names) != len(sources):
        raise ValueError(f"need one name per source ({len(sources)}), got {len(names)}")
    files = [i for i, src in enumerate(sources) if isinstance(src, (str, os.PathLike))]
    workers = min(len(files), workers or _available_cpus())
    if workers <= 1:
        return [load_for_model(src, image_size, name, max_pixels) for src, name in zip(sources, names)]
    # The warning filters are set once, here: warnings.catch_warnings is not thread-safe, so
    # the workers must not enter it themselves (quiet=True).
    with quiet_decoders(), ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        jobs: dict[int, Future[DecodedImage]] = {}
        for i in files:
            label = names[i] or os.fspath(sources[i])  # type: ignore[arg-type]
            jobs[i] = pool.submit(load_file_for, sources[i], image_size, label, max_pixels, True)  # type: ignore[arg-type]
        try:
            return [jobs[i].result() if i in jobs else load_for_model(src, image_size, names[i], max_pixels)
                    for i, src in enumerate(sources)]  # fmt: skip
        finally:
            for job in jobs.values():  # after a failure: no more decoding than already started
                job.cancel()


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use (containers, taskset)
    except AttributeError:  # not on every OS
        return os.cpu_count() or 1


def iter_image_chunks(
    images: Any, chunk_size: int, max_pixels: int | None, image_size: tuple[int, int] | None = None
) -> Iterator[list[DecodedImage]]:
    """Decode ``images`` (one input or a list) ``chunk_size`` at a time: yields lists of uint8
    ``[3, H, W]`` tensors (or :class:`ReducedImage` s of large JPEGs, when ``image_size``, the
    model's input, is given). In-memory inputs are named "image #i" (their index) in errors."""
    if not isinstance(images, (list, tuple)):
        images = [images]
    for start in range(0, len(images), chunk_size):
        chunk = images[start : start + chunk_size]
        names = [None if isinstance(x, (str, os.PathLike)) else f"image #{start + i}" for i, x in enumerate(chunk)]
        yield load_images(chunk, names, max_pixels, image_size=image_size)
