"""Decoding a batch on threads: the same tensors as one by one, errors in order, warning filters
left as they were."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from efficientdet.data.decode import iter_image_chunks, load_images
from efficientdet.data.images import ImageError, load_image


def _files(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i, (fmt, ext) in enumerate([("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"), ("GIF", "gif"), ("BMP", "bmp")]):
        array = rng.integers(0, 255, (30 + i, 50 - i, 3), dtype=np.uint8)
        exif = Image.Exif()
        exif[0x0112] = 6  # rotated: the decoders must apply it on the worker threads too
        path = tmp_path / f"img{i}.{ext}"
        Image.fromarray(array).save(path, fmt, **({"exif": exif} if fmt in ("JPEG", "PNG", "WEBP") else {}))
        paths.append(path)
    return paths


def test_threads_give_the_same_tensors_in_order(tmp_path: Path) -> None:
    files = _files(tmp_path)
    array = np.full((7, 9, 3), 200, np.uint8)
    sources = [files[0], array, *files[1:], torch.zeros(3, 4, 5, dtype=torch.uint8), str(files[0])]
    want = [load_image(s) for s in sources]
    assert want[0].shape == (3, 50, 30)  # the EXIF rotation
    for workers in (None, 1, 2, 3):
        got = load_images(sources, workers=workers)
        assert len(got) == len(want) and all(torch.equal(g, w) for g, w in zip(got, want))


def test_first_failure_in_order_raises_and_filters_are_restored(tmp_path: Path) -> None:
    good = _files(tmp_path)[0]
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    missing = tmp_path / "missing.jpg"
    before = list(warnings.filters)
    for sources, culprit in (([good, missing, text], missing), ([good, text, missing], text)):
        with pytest.raises(ImageError) as info:
            load_images(sources, workers=3)
        assert str(culprit) in str(info.value)
        assert warnings.filters == before
    with pytest.raises(ImageError, match=r"image #3"):  # in-memory inputs are named by index
        next(iter_image_chunks([good, good, good, np.zeros((2, 2, 7), np.uint8)], 4, None))
    with pytest.raises(ValueError, match="one name per source"):
        load_images([good], names=["a", "b"])


def test_decoder_warnings_stay_silent_on_worker_threads(tmp_path: Path) -> None:
    files = _files(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_images(files * 2, workers=2)
    assert not [w for w in caught if "torchvision" in str(w.filename) or issubclass(w.category, DeprecationWarning)]
