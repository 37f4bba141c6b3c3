"""Tests for efficientdet.inference.preprocess: shapes, scales, padding, normalisation, coordinate mapping."""

from __future__ import annotations

import pytest
import torch

from efficientdet.config import PreprocessConfig
from efficientdet.inference.preprocess import preprocess_batch, resize_and_pad

CONFIG = PreprocessConfig(image_size=(64, 96))


def _random(h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize(
    ("hw", "expected_scale", "content_hw"),
    [
        ((120, 360), 96 / 360, (32, 96)),  # landscape: width binds
        ((200, 100), 64 / 200, (64, 32)),  # portrait: height binds
        ((16, 24), 4.0, (64, 96)),  # upscaled, same aspect ratio
    ],
)
def test_shape_scale_and_padding(hw: tuple[int, int], expected_scale: float, content_hw: tuple[int, int]) -> None:
    # All-white input: normalised white is positive in every channel, padding must be 0.
    image = torch.full((3, *hw), 255, dtype=torch.uint8)
    out, scale = resize_and_pad(image, CONFIG.image_size, CONFIG.mean, CONFIG.std)
    assert out.shape == (3, 64, 96) and out.dtype == torch.float32
    assert scale == pytest.approx(expected_scale)
    ch, cw = content_hw
    white = (255 - torch.tensor(CONFIG.mean)) / torch.tensor(CONFIG.std)
    torch.testing.assert_close(out[:, :ch, :cw], white.view(3, 1, 1).expand(3, ch, cw))
    assert torch.count_nonzero(out[:, ch:, :]) == 0
    assert torch.count_nonzero(out[:, :, cw:]) == 0


def test_image_at_model_size_is_only_normalised() -> None:
    image = _random(64, 96)
    out, scale = resize_and_pad(image, (64, 96), CONFIG.mean, CONFIG.std)
    assert scale == 1.0
    mean = torch.tensor(CONFIG.mean).view(3, 1, 1)
    std = torch.tensor(CONFIG.std).view(3, 1, 1)
    torch.testing.assert_close(out, (image.float() - mean) / std, rtol=0, atol=1e-6)
    # Pixel 0 of channel 0 by hand.
    assert float(out[0, 0, 0]) == pytest.approx((int(image[0, 0, 0]) - 0.485 * 255) / (0.229 * 255), abs=1e-5)


@pytest.mark.parametrize("hw", [(300, 500), (500, 300), (40, 50)])
def test_point_maps_back_with_scale(hw: tuple[int, int]) -> None:
    h, w = hw
    y0, x0, side = int(h * 0.6), int(w * 0.3), max(h, w) // 10
    image = torch.zeros((3, h, w), dtype=torch.uint8)
    image[:, y0 : y0 + side, x0 : x0 + side] = 255
    out, scale = resize_and_pad(image, (128, 128), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    # Intensity centroid in continuous pixel coordinates (pixel i covers [i, i+1)).
    mass = out[0]
    ys, xs = torch.meshgrid(torch.arange(128) + 0.5, torch.arange(128) + 0.5, indexing="ij")
    cy, cx = float((mass * ys).sum() / mass.sum()), float((mass * xs).sum() / mass.sum())
    assert cy / scale == pytest.approx(y0 + side / 2, abs=1.0)
    assert cx / scale == pytest.approx(x0 + side / 2, abs=1.0)


def test_preprocess_batch_matches_single_and_reports_sizes() -> None:
    images = [_random(120, 360, 1), _random(200, 100, 2), _random(64, 96, 3)]
    batch, scales, sizes = preprocess_batch(images, CONFIG)
    assert batch.shape == (3, 3, 64, 96) and batch.dtype == torch.float32
    assert scales.dtype == torch.float32 and scales.shape == (3,)
    assert sizes == [(120, 360), (200, 100), (64, 96)]
    for i, image in enumerate(images):
        single, scale = resize_and_pad(image, CONFIG.image_size, CONFIG.mean, CONFIG.std)
        torch.testing.assert_close(batch[i], single, rtol=0, atol=0)
        assert float(scales[i]) == pytest.approx(scale)
    empty, empty_scales, empty_sizes = preprocess_batch([], CONFIG)
    assert empty.shape == (0, 3, 64, 96) and empty_scales.shape == (0,) and empty_sizes == []


def test_padding_is_written_not_assumed(monkeypatch: pytest.MonkeyPatch) -> None:
    # The buffers are allocated uninitialised and only the padding is zeroed: with allocations
    # poisoned with NaN, every value outside the content must still be exactly 0.
    empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **k: empty(*a, **k).fill_(float("nan")))
    images = [_random(120, 360, 1), _random(200, 100, 2), _random(64, 96, 3)]
    batch, _, _ = preprocess_batch(images, CONFIG)
    single, _ = resize_and_pad(images[1], CONFIG.image_size, CONFIG.mean, CONFIG.std)
    assert not batch.isnan().any() and not single.isnan().any()
    assert torch.count_nonzero(batch[0, :, 32:, :]) == 0 and torch.count_nonzero(batch[1, :, :, 32:]) == 0
    assert torch.count_nonzero(single[:, :, 32:]) == 0
    monkeypatch.undo()
    torch.testing.assert_close(batch, preprocess_batch(images, CONFIG)[0], rtol=0, atol=0)


def test_uint8_resize_is_close_to_float_resize() -> None:
    import torchvision.transforms.v2.functional as TF

    image = _random(300, 450)
    out, _ = resize_and_pad(image, (64, 96), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    ref = TF.resize(image.float(), [64, 96], antialias=True)
    assert float((out - ref).abs().max()) <= 1.0  # only uint8 rounding of the resized image


def test_thin_image_keeps_at_least_one_pixel() -> None:
    out, scale = resize_and_pad(torch.full((3, 1, 1000), 255, dtype=torch.uint8), (64, 96), (0.0,) * 3, (1.0,) * 3)
    assert scale == pytest.approx(96 / 1000)
    assert float(out[0, 0, 0]) > 0 and torch.count_nonzero(out[:, 1:]) == 0


@pytest.mark.parametrize(
    "image",
    [
        torch.zeros(3, 8, 8),
        torch.zeros(4, 8, 8, dtype=torch.uint8),
        torch.zeros(8, 8, dtype=torch.uint8),
        torch.zeros(3, 0, 8, dtype=torch.uint8),
    ],
)
def test_bad_inputs_raise(image: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="image #1"):
        preprocess_batch([_random(8, 8), image], CONFIG)


def test_memory_layout_does_not_change_the_input() -> None:
    """load_image gives HWC-ordered memory (the fast resize path); a CHW tensor must prepare to
    the very same bits, for downscales, upscales and an image already at the model size."""
    torch.manual_seed(0)
    config = PreprocessConfig(image_size=(64, 64))
    for hw in ((120, 90), (30, 50), (64, 64), (64, 40)):
        chw = torch.randint(0, 256, (3, *hw), dtype=torch.uint8)
        hwc = chw.permute(1, 2, 0).contiguous().permute(2, 0, 1)
        assert not hwc.is_contiguous()
        a, _, _ = preprocess_batch([chw], config)
        b, _, _ = preprocess_batch([hwc], config)
        assert torch.equal(a, b), hw
