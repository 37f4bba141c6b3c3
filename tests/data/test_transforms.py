import pytest
import torch

from efficientdet.data.transforms import TrainTransform
from efficientdet.inference.preprocess import fit_size, normalize_batch, preprocess_batch
from efficientdet.variants import get_config

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255)]
BACKGROUND = (30, 30, 30)


def _scene(seed: int, height: int = 240, width: int = 320) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A dark image with one filled rectangle per colour (3 x 2 grid cells, no overlaps)."""
    gen = torch.Generator().manual_seed(seed)
    image = torch.tensor(BACKGROUND, dtype=torch.uint8).view(3, 1, 1).repeat(1, height, width)
    cell_h, cell_w = height // 2, width // 3
    boxes = []
    for i, colour in enumerate(COLOURS):
        cy, cx = (i // 3) * cell_h, (i % 3) * cell_w
        x0 = cx + int(torch.randint(0, cell_w // 3, (), generator=gen))
        y0 = cy + int(torch.randint(0, cell_h // 3, (), generator=gen))
        x1 = x0 + int(torch.randint(12, cell_w - (x0 - cx), (), generator=gen))
        y1 = y0 + int(torch.randint(12, cell_h - (y0 - cy), (), generator=gen))
        image[:, y0:y1, x0:x1] = torch.tensor(colour, dtype=torch.uint8).view(3, 1, 1)
        boxes.append([x0, y0, x1, y1])
    return image, torch.tensor(boxes, dtype=torch.float32), torch.arange(len(COLOURS))


def _colour_mask(image: torch.Tensor, colour: tuple[int, int, int], tol: int) -> torch.Tensor:
    diff = (image.int() - torch.tensor(colour).view(3, 1, 1)).abs()
    return (diff <= tol).all(0)


def _check_boxes_follow_pixels(image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor) -> int:
    """Check every kept box against its colour's pixels -> how many boxes were compared."""
    compared = 0
    for i, colour in enumerate(COLOURS):
        kept = (labels == i).nonzero().flatten()
        if len(kept) == 0:
            # Dropped: nothing (beyond blending slivers) of that colour may remain visible.
            assert not _colour_mask(image, colour, 20).any(), f"colour {i} visible but its box was dropped"
            continue
        x0, y0, x1, y1 = boxes[int(kept[0])].tolist()
        mask = _colour_mask(image, colour, 60)
        if min(x1 - x0, y1 - y0) < 3:
            continue  # too thin for a pure-colour pixel after antialiasing
        ys, xs = mask.nonzero(as_tuple=True)
        assert len(xs) > 0, f"box {i} kept but no pixel of its colour"
        pixel_box = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
        assert torch.allclose(pixel_box, torch.tensor([x0, y0, x1, y1]), atol=2.0), (i, pixel_box, (x0, y0, x1, y1))
        compared += 1
    return compared


@pytest.mark.parametrize("scale_range", [(0.5, 2.0), (0.1, 2.0)])
def test_boxes_follow_the_pixels(scale_range: tuple[float, float]) -> None:
    transform = TrainTransform((128, 160), scale_range=scale_range, hflip=0.5)
    flips = drops = compared = 0
    for seed in range(12):
        image, boxes, labels = _scene(seed)
        torch.manual_seed(seed)
        out, out_boxes, out_labels, _ = transform(image, boxes, labels)
        assert out.shape == (3, 128, 160) and out.dtype == torch.uint8
        assert out_boxes.shape == (len(out_labels), 4) and out_boxes.dtype == torch.float32
        compared += _check_boxes_follow_pixels(out, out_boxes, out_labels)
        drops += len(labels) - len(out_labels)
        # Flipped outputs show the red box (top-left in the source) to the right of the green one.
        if {0, 1} <= set(out_labels.tolist()):
            flips += bool(out_boxes[out_labels == 0, 0] > out_boxes[out_labels == 1, 0])
    assert compared >= 12 * len(COLOURS) // 2  # most kept boxes were checked against their pixels (56 of 72 here)
    assert flips > 0  # the flip branch was exercised
    if scale_range[0] == 0.1:
        assert drops > 0  # and so was dropping (tiny scales, crops)


def test_degenerate_boxes_dropped_with_labels() -> None:
    image = torch.zeros(3, 100, 200, dtype=torch.uint8)
    boxes = torch.tensor(
        [
            [10.0, 10.0, 50.0, 40.0],  # fine
            [60.0, 10.0, 61.5, 40.0],  # 1.5 px wide -> 0.75 px at scale 0.5: dropped
            [250.0, 10.0, 300.0, 40.0],  # outside the image: clipped to zero width
            [-20.0, 50.0, 30.0, 90.0],  # partly outside: clipped to [0, 50, 30, 90] -> halved
            [100.0, 70.0, 140.0, 70.5],  # too low
        ]
    )
    labels = torch.tensor([7, 8, 9, 10, 11])
    # Scale 0.5 (image 100x200 into 50x100 content on a 50x120 canvas).
    out, out_boxes, out_labels, content = TrainTransform((50, 120), scale_range=(1.0, 1.0), hflip=0.0)(
        image, boxes, labels
    )
    assert content == (50, 100) and out.shape == (3, 50, 120)
    assert out_labels.tolist() == [7, 10]
    assert torch.allclose(out_boxes, torch.tensor([[5.0, 5.0, 25.0, 20.0], [0.0, 25.0, 15.0, 45.0]]))
    # An identity geometry (scale 1, image already the size).
    out, out_boxes, out_labels, content = TrainTransform((100, 200), scale_range=(1.0, 1.0), hflip=0.0)(image, boxes, labels)
    assert torch.equal(out, image) and content == (100, 200)
    assert out_labels.tolist() == [7, 8, 10]
    expected = torch.tensor([[10.0, 10.0, 50.0, 40.0], [60.0, 10.0, 61.5, 40.0], [0.0, 50.0, 30.0, 90.0]])
    assert torch.equal(out_boxes, expected)
    # No boxes at all.
    _, out_boxes, out_labels, _ = TrainTransform((64, 64))(image, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))
    assert out_boxes.shape == (0, 4) and out_labels.shape == (0,)


@pytest.mark.parametrize("src", [(240, 320), (1000, 50), (7, 900), (64, 64)])
def test_output_size_is_exact(src: tuple[int, int]) -> None:
    image = torch.randint(0, 256, (3, *src), dtype=torch.uint8)
    boxes = torch.tensor([[0.0, 0.0, src[1] / 2, src[0] / 2]])
    for seed in range(5):
        torch.manual_seed(seed)
        out, _, _, (ch, cw) = TrainTransform((96, 128), photometric=seed % 2 == 0)(image, boxes, torch.tensor([1]))
        assert out.shape == (3, 96, 128) and out.dtype == torch.uint8
        assert 1 <= ch <= 96 and 1 <= cw <= 128


def test_deterministic_under_manual_seed() -> None:
    image, boxes, labels = _scene(0)
    transform = TrainTransform((128, 160), photometric=True)
    results = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        results.append(transform(image, boxes, labels)[:3])
    assert all(torch.equal(a, b) for a, b in zip(results[0], results[1]))
    assert not all(
        a.shape == b.shape and torch.equal(a, b) for a, b in zip(results[0], results[2])
    )


def test_content_top_left_and_zero_padding() -> None:
    image = torch.full((3, 100, 100), 255, dtype=torch.uint8)
    torch.manual_seed(0)
    transform = TrainTransform((128, 128), scale_range=(0.25, 0.25), hflip=0.0)
    out, _, _, content = transform(image, torch.zeros(0, 4), torch.zeros(0))
    assert content == (32, 32)
    assert (out[:, :32, :32] == 255).all()
    assert (out[:, 32:, :] == 0).all() and (out[:, :, 32:] == 0).all()


@pytest.mark.parametrize("name", ["efficientdet_d0", "efficientdet_lite0"])
@pytest.mark.parametrize("src", [(480, 640), (300, 200), (123, 457)])
def test_training_input_equals_inference_input(name: str, src: tuple[int, int]) -> None:
    """With the augmentation switched off (scale 1, no flip), what training feeds the network
    equals what Detector builds: same resized pixels, same border (0 after normalising) for
    both families (the Lite family's mean 127 / std 128 too)."""
    cfg = get_config(name).replace(image_size=256).preprocess
    image = torch.randint(0, 256, (3, *src), dtype=torch.uint8)
    out, _, _, content = TrainTransform(cfg.image_size, scale_range=(1.0, 1.0), hflip=0.0)(
        image, torch.zeros(0, 4), torch.zeros(0)
    )
    trained = normalize_batch(out[None], [content], cfg.mean, cfg.std)
    ref, _, _ = preprocess_batch([image], cfg)
    _, new_h, new_w = fit_size(src, cfg.image_size)
    assert content == (new_h, new_w)
    assert torch.allclose(trained, ref, atol=1e-5, rtol=0)
    assert (ref[0, :, new_h:, :] == 0).all() and (ref[0, :, :, new_w:] == 0).all()


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match=r"^scale_range must satisfy 0 < min <= max, got \(0\.0, 1\.0\)$"):
        TrainTransform((128, 128), scale_range=(0.0, 1.0))
    with pytest.raises(ValueError, match=r"^hflip must be a probability, got 1\.5$"):
        TrainTransform((128, 128), hflip=1.5)
    with pytest.raises(ValueError, match=r"^image: expected a uint8 \[3, H, W\] tensor, got torch\.float32 \(3, 10, 10\)"):
        TrainTransform((128, 128))(torch.zeros(3, 10, 10), torch.zeros(0, 4), torch.zeros(0))  # float image
    with pytest.raises(ValueError, match=r"^got 2 boxes but 3 labels$"):
        TrainTransform((128, 128))(torch.zeros(3, 10, 10, dtype=torch.uint8), torch.zeros(2, 4), torch.zeros(3))
