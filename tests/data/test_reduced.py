"""Reduced JPEG decodes: which factor, what the pixels are, and that boxes map back exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageFile

from efficientdet import Detector, create_model
from efficientdet.config import PreprocessConfig
from efficientdet.data.dataset import DetectionDataset
from efficientdet.data.decode import load_images
from efficientdet.data.images import ImageError, load_for_model, load_image
from efficientdet.data.records import DatasetIndex, DetectionRecord
from efficientdet.data.reduced import ReducedImage, full_size, image_pixels
from efficientdet.inference.preprocess import preprocess_batch, reduction_factor


@pytest.mark.parametrize(
    ("src", "dst", "factor"),
    [
        # 12 MP into 512: fit (384, 512), 1.5x that is (576, 768); 1/4 = (756, 1008) covers it,
        # 1/8 = (378, 504) does not.
        ((3024, 4032), (512, 512), 4),
        (
            (3024, 4032),
            (320, 320),
            8,
        ),  # fit (240, 320) x 1.5 = (360, 480) <= 1/8 = (378, 504)
        (
            (3024, 4032),
            (768, 768),
            2,
        ),  # fit (576, 768) x 1.5 = (864, 1152) > 1/4 = (756, 1008)
        # 640x480 into 320: a 1/2 decode is exactly the fit, (240, 320): no margin left for the
        # resize's smoothing, so a full decode.
        ((480, 640), (320, 320), 1),
        ((480, 640), (512, 512), 1),
        ((10, 10), (512, 512), 1),  # an upscale
        # Thin: fit (64, 6) x 1.5 = (96, 9); 1/8 = (125, 13) covers it and 8 is JPEG's largest.
        ((1000, 100), (64, 64), 8),
        # At the margin: fit (100, 100) x 1.5 = (150, 150); 1/2 of 300 is 150; of 299, 150 too
        # (sides round up); of 298, 149.
        ((300, 300), (100, 100), 2),
        ((299, 299), (100, 100), 2),
        ((298, 298), (100, 100), 1),
    ],
)
def test_reduction_factor(
    src: tuple[int, int], dst: tuple[int, int], factor: int
) -> None:
    assert reduction_factor(src, dst) == factor


def _smooth(h: int, w: int) -> np.ndarray:
    """A smooth colour field (JPEG keeps it well; resamplers agree on it to a level or two)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 128 + 100 * np.sin(x / 97.0) * np.cos(y / 131.0)
    g = 128 + 90 * np.cos((x + y) / 173.0)
    b = 60 + 150 * (x / w)
    return np.stack([r, g, b], -1).clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("reduced") / "big.jpg"
    Image.fromarray(_smooth(1200, 1600)).save(path, quality=95)
    return path


def test_large_jpeg_is_decoded_reduced_and_close_to_a_full_decode(
    big_jpeg: Path,
) -> None:
    image = load_for_model(big_jpeg, (256, 256))
    assert isinstance(image, ReducedImage)
    # fit (192, 256) x 1.5 = (288, 384): 1/4 = (300, 400) covers it, 1/8 = (150, 200) does not
    assert (
        image.factor == 4
        and image.size == (1200, 1600)
        and image.pixels.shape == (3, 300, 400)
    )
    assert full_size(image) == (1200, 1600) and image_pixels(image) is image.pixels
    full = load_image(big_jpeg)
    shrunk = TF.resize(full, [300, 400], antialias=True)
    diff = (image.pixels.float() - shrunk.float()).abs()
    assert float(diff.mean()) < 1.5 and float(diff.max()) < 12  # levels of 255

    # What the model sees: the same scale per full-image pixel, the same sizes, near-equal input.
    config = PreprocessConfig(image_size=(256, 256))
    batch_r, scales_r, sizes_r = preprocess_batch([image], config)
    batch_f, scales_f, sizes_f = preprocess_batch([full], config)
    assert sizes_r == sizes_f == [(1200, 1600)]
    torch.testing.assert_close(
        scales_r, scales_f
    )  # 256 / 1600 both ways: 400 x 4 = 1600
    assert float((batch_r - batch_f).abs().mean()) < 0.03  # ~1.7 levels after / std


def test_exif_rotation_is_applied_and_the_size_is_the_displayed_one(
    tmp_path: Path,
) -> None:
    array = _smooth(800, 1200)
    array[:160, :160] = [255, 0, 0]  # red top-left corner, stored
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise: red at the top-right
    path = tmp_path / "rot.jpg"
    Image.fromarray(array).save(path, exif=exif, quality=95)
    image = load_for_model(path, (256, 256))
    assert isinstance(image, ReducedImage)
    assert image.size == (1200, 800) and image.pixels.shape == (
        3,
        1200 // image.factor,
        800 // image.factor,
    )
    corner = image.pixels[:, 2, -3]
    assert corner[0] > 180 and corner[1] < 80  # red at the displayed top-right
    assert image.size == tuple(load_image(path).shape[1:])


def test_what_is_decoded_in_full(tmp_path: Path, big_jpeg: Path) -> None:
    png = tmp_path / "big.png"
    Image.fromarray(_smooth(1200, 1600)).save(png)
    small = tmp_path / "small.jpg"
    Image.fromarray(_smooth(300, 400)).save(small)
    assert isinstance(load_for_model(png, (320, 320)), torch.Tensor)  # not a JPEG
    assert isinstance(
        load_for_model(small, (320, 320)), torch.Tensor
    )  # a 1/2 decode is under the fit
    assert isinstance(
        load_for_model(big_jpeg, None), torch.Tensor
    )  # no input size: in full
    in_memory = torch.zeros(3, 1200, 1600, dtype=torch.uint8)
    assert load_for_model(in_memory, (320, 320)) is in_memory  # already decoded
    reduced = load_for_model(big_jpeg, (320, 320))
    assert load_for_model(reduced, (320, 320)) is reduced
    # The batch decoder, with threads, does the same per source and keeps the order.
    out = load_images([big_jpeg, png, reduced, small], image_size=(320, 320), workers=2)
    assert [type(o).__name__ for o in out] == [
        "ReducedImage",
        "Tensor",
        "ReducedImage",
        "Tensor",
    ]


def test_a_truncated_large_jpeg_is_a_clear_error(
    tmp_path: Path, big_jpeg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = big_jpeg.read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as err:
        load_for_model(path, (320, 320))
    assert str(path) in str(err.value) and "truncated" in str(err.value)
    # An application that lets Pillow accept truncated files still gets the error (the full
    # decode's check), not a partly grey photo.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageError, match="truncated"):
        load_for_model(path, (320, 320))
    assert isinstance(
        load_for_model(big_jpeg, (320, 320)), torch.Tensor
    )  # in full, then


def test_a_reduced_image_checks_its_shape() -> None:
    with pytest.raises(ValueError, match="do not reduce a 100x200"):
        ReducedImage(torch.zeros(3, 50, 50, dtype=torch.uint8), (100, 200), 2)
    with pytest.raises(ValueError, match="factor 2, 4 or 8"):
        ReducedImage(torch.zeros(3, 34, 67, dtype=torch.uint8), (100, 200), 3)


@pytest.fixture(scope="module")
def detector() -> Detector:
    torch.manual_seed(0)
    model = create_model(
        "efficientdet_lite0", num_classes=3, image_size=128, pretrained_backbone=False
    )
    for m in model.modules():  # spread-out scores: many boxes, few ties
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
    return Detector(model)


def test_boxes_of_a_reduced_image_are_the_full_images(detector: Detector) -> None:
    """The same pixels, as themselves or as a 1/4 decode of a 244x324 photo: the network input
    is identical, so the detections are too, with boxes times 4."""
    torch.manual_seed(1)
    pixels = torch.randint(0, 256, (3, 61, 81), dtype=torch.uint8)
    config = detector.config_with_threshold(0.001)
    [plain] = detector.detect([pixels], config)
    [mapped] = detector.detect([ReducedImage(pixels, (244, 324), 4)], config)
    assert len(plain["boxes"]) > 10
    torch.testing.assert_close(mapped["scores"], plain["scores"])
    assert torch.equal(mapped["labels"], plain["labels"])
    torch.testing.assert_close(
        mapped["boxes"], plain["boxes"] * 4, atol=1e-3, rtol=1e-5
    )
    # A photo whose sides are not multiples of 4 (the last decoded row and column reach past
    # it): its boxes stay inside it.
    [odd] = detector.detect([ReducedImage(pixels, (243, 321), 4)], config)
    assert (
        len(odd["boxes"]) > 10
        and float(odd["boxes"][:, 2].max()) <= 321
        and float(odd["boxes"][:, 3].max()) <= 243
    )
    assert float(odd["boxes"][:, 2].max()) > 300  # full-image pixels


def test_detector_calls_on_paths_decode_reduced(
    detector: Detector, big_jpeg: Path
) -> None:
    assert detector.decode_size == (128, 128)
    [decoded] = next(detector.decode_chunks([big_jpeg]))
    assert isinstance(decoded, ReducedImage) and decoded.factor == 8
    [by_path] = detector([big_jpeg], score_threshold=0.001)
    [by_hand] = detector.detect([decoded], detector.config_with_threshold(0.001))
    assert torch.equal(by_path["boxes"], by_hand["boxes"])
    assert (
        float(by_path["boxes"][:, 2].max()) > 400
    )  # full-image pixels, not the 150x200 decode's


def test_tiles_and_flips_need_full_decodes(detector: Detector, big_jpeg: Path) -> None:
    from efficientdet.inference import SlicedDetector, TTADetector

    reduced = load_for_model(big_jpeg, (128, 128))
    for wrapper in (
        TTADetector(detector, flips=True),
        SlicedDetector(detector, tile=128),
    ):
        assert wrapper.decode_size is None
        assert isinstance(next(wrapper.decode_chunks([big_jpeg]))[0], torch.Tensor)
        with pytest.raises(TypeError, match="needs fully decoded images"):
            wrapper.detect([reduced])


def test_evaluation_dataset_decodes_as_the_detector(big_jpeg: Path) -> None:
    """GT boxes stay in the photo's pixels (clipped to its full size), the image is reduced."""
    record = DetectionRecord(
        image_path=big_jpeg, image_id=7, boxes=torch.tensor([[100.0, 50.0, 1700.0, 900.0]]),
        labels=torch.tensor([0]), width=1600, height=1200,
    )  # fmt: skip
    index = DatasetIndex(records=[record], class_names=["a"])
    sample = DetectionDataset(index, None, decode_size=(320, 320))[0]
    assert sample is not None and isinstance(sample["image"], ReducedImage)
    assert sample["orig_size"] == (1200, 1600)
    assert sample["boxes"].tolist() == [[100.0, 50.0, 1600.0, 900.0]]
    with pytest.raises(ValueError, match="without a transform"):
        DetectionDataset(index, lambda i, b, lab: (i, b, lab), decode_size=(320, 320))
