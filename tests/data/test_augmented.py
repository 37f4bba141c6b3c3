"""AugmentedDataset (mosaic / mixup / AutoAugment / GridMask in training) and the augment.* config keys."""

import re

import pytest
import torch

from efficientdet.data.augmented import AugmentedDataset, build_pre_ops
from efficientdet.data.formats import read_dataset
from efficientdet.data.synthetic import make_synthetic_dataset
from efficientdet.data.transforms import TrainTransform
from efficientdet.engine.config import load_train_config


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    return read_dataset(str(make_synthetic_dataset(root, num_images=6, image_size=96, seed=1)))


def test_all_augmentations_give_valid_training_samples(index) -> None:
    ds = AugmentedDataset(
        index, TrainTransform(64), None, build_pre_ops("v3", True), mosaic=1.0, mixup=1.0, close_mosaic=2, epochs=5
    )
    num_classes = len(index.class_names)
    assert len(ds) == 6
    num_boxes = 0
    for i in range(len(ds)):
        torch.manual_seed(i)
        s = ds[i]
        ch, cw = s["content_size"]
        assert s["image"].shape == (3, 64, 64) and s["image"].dtype == torch.uint8
        b = s["boxes"]
        assert ((b[:, 2] - b[:, 0]) >= 1).all() and ((b[:, 3] - b[:, 1]) >= 1).all()
        assert (b >= 0).all() and (b[:, [0, 2]] <= cw).all() and (b[:, [1, 3]] <= ch).all()
        assert ((s["labels"] >= 0) & (s["labels"] < num_classes)).all()
        num_boxes += len(b)
    assert num_boxes >= 2 * len(ds)  # the box checks ran on real boxes (35 here), not on empty tensors


def test_close_mosaic_turns_mixing_off_for_the_last_epochs(index) -> None:
    ds = AugmentedDataset(index, TrainTransform(64), None, [], mosaic=1.0, mixup=0.5, close_mosaic=2, epochs=5)
    on = []
    for epoch in range(5):
        ds.set_epoch(epoch)
        on.append(ds.mixing)
    assert on == [True, True, True, False, False]


def test_mosaic_needs_four_images(index) -> None:
    import dataclasses

    small = dataclasses.replace(index, records=index.records[:3])
    with pytest.raises(ValueError, match=re.escape("augment.mosaic: a mosaic needs at least 4 training images")):
        AugmentedDataset(small, TrainTransform(64), None, [], mosaic=0.5)


@pytest.mark.parametrize(
    "override, message",
    [
        ("augment.policy=v7", "augment.policy: unknown policy 'v7'"),
        ("augment.mosaic=1.5", r"augment.mosaic: 1.5 is not a probability in \[0, 1\]"),
        ("augment.mixup=-0.1", r"augment.mixup: -0.1 is not a probability in \[0, 1\]"),
        ("augment.close_mosaic=-1", "augment.close_mosaic"),
    ],
)
def test_bad_augment_config_is_one_clear_error(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_train_config(None, [override])


def test_augment_keys_parse() -> None:
    cfg = load_train_config(None, ["augment.policy=v0", "augment.mosaic=0.5", "augment.grid_mask=true"], "finetune")
    assert (cfg.augment.policy, cfg.augment.mosaic, cfg.augment.grid_mask) == ("v0", 0.5, True)
    finetune = load_train_config(None, None, "finetune").augment
    # measured on raccoon: no extra augmentation raised AP beyond the seeds' spread
    assert (finetune.policy, finetune.mosaic, finetune.mixup, finetune.grid_mask) == ("none", 0.0, 0.0, False)
    official = load_train_config(None, None, "official").augment
    assert (official.policy, official.mosaic, official.mixup, official.grid_mask) == ("none", 0.0, 0.0, False)  # the paper


def _rect_index(tmp_path, n: int = 6):
    """PNG images (lossless), black, one solid white rectangle each, and their index."""
    from PIL import Image

    from efficientdet.data.records import DatasetIndex, DetectionRecord

    gen = torch.Generator().manual_seed(0)
    records = []
    for i in range(n):
        h, w = int(torch.randint(80, 200, (), generator=gen)), int(torch.randint(80, 200, (), generator=gen))
        x0, y0 = int(torch.randint(0, w // 2, (), generator=gen)), int(torch.randint(0, h // 2, (), generator=gen))
        x1, y1 = x0 + w // 3, y0 + h // 3
        image = torch.zeros((h, w, 3), dtype=torch.uint8)
        image[y0:y1, x0:x1] = 255
        path = tmp_path / f"{i}.png"
        Image.fromarray(image.numpy()).save(path)
        records.append(DetectionRecord(path, torch.tensor([[x0, y0, x1, y1]], dtype=torch.float32), torch.tensor([i % 2]), i, w, h))
    return DatasetIndex(records=records, class_names=["a", "b"])


@pytest.mark.parametrize("policy", ["v0", "v1", "v2", "v3"])
def test_whole_pipeline_boxes_follow_the_pixels(policy: str, tmp_path, monkeypatch) -> None:
    """Mosaic -> AutoAugment -> scale jitter / crop / flip: every white pixel of the training canvas
    lies in a box (within 1 px). Pixel-only ops are made identity here: they never move boxes
    (checked in test_augment.py), but solarize / equalize would recolour the black background."""
    from efficientdet.data import autoaugment

    from .test_augment import _covered

    monkeypatch.setattr(autoaugment, "_image_op", lambda name, level: (lambda im: im) if name in _PIXEL_OPS else None)
    index = _rect_index(tmp_path)
    ds = AugmentedDataset(index, TrainTransform(96, (0.3, 2.0)), None, build_pre_ops(policy), mosaic=0.5)
    for seed in range(12):
        torch.manual_seed(seed)
        s = ds[seed % len(ds)]
        assert _covered(s["image"], s["boxes"]), f"seed {seed}: an object pixel outside every box"
        assert set(s["labels"].tolist()) <= {0, 1}


_PIXEL_OPS = {"AutoContrast", "Equalize", "Posterize", "Solarize", "SolarizeAdd", "Color", "Contrast", "Brightness", "Sharpness"}


def test_mosaic_of_crops_keeps_the_crops_scale(tmp_path) -> None:
    """With ``data.crop_size`` a mosaic is made of full-resolution crops: its boxes keep the
    size sliced training teaches (16 px squares in 640 px images, crops of 128 at 128 px: about
    16 px). Whole images shrunk into the mosaic made them ~3 px, most dropped as slivers."""
    from PIL import Image

    from efficientdet.data.crops import CropTransform
    from efficientdet.data.records import DatasetIndex, DetectionRecord

    records = []
    for i in range(4):
        image = torch.zeros((640, 640, 3), dtype=torch.uint8)
        boxes = []
        for k in range(6):  # a row of 16 px squares
            x0, y0 = 60 + 90 * k, 100 + 80 * i
            image[y0 : y0 + 16, x0 : x0 + 16] = 255
            boxes.append([x0, y0, x0 + 16, y0 + 16])
        Image.fromarray(image.numpy()).save(tmp_path / f"{i}.png")
        records.append(DetectionRecord(tmp_path / f"{i}.png", torch.tensor(boxes, dtype=torch.float32), torch.zeros(6, dtype=torch.int64), i, 640, 640))
    ds = AugmentedDataset(DatasetIndex(records, ["square"]), CropTransform(128, 128, hflip=0.0), None, mosaic=1.0)
    sides = []
    for seed in range(16):
        torch.manual_seed(seed)
        s = ds[seed % 4]
        for x0, y0, x1, y1 in s["boxes"].round().int().tolist():  # each box lies on its square
            assert s["image"][0, y0:y1, x0:x1].float().mean() > 0.6 * 255, f"seed {seed}"
        sides += (s["boxes"][:, 2:] - s["boxes"][:, :2]).max(dim=1).values.tolist()
    assert len(sides) >= 16
    assert 11.0 <= float(torch.tensor(sides).median()) <= 21.0  # 16 px at crop scale jitter 0.8-1.25
