"""Tests for DetectionDataset and collate_detections: samples, clipping, bad images, batching."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader

from efficientdet.data.coco import read_coco
from efficientdet.data.dataset import DetectionDataset, collate_detections
from efficientdet.data.records import DataIssue, DatasetIndex, DetectionRecord
from efficientdet.data.synthetic import make_synthetic_dataset


def _jpeg(path: Path, w: int, h: int, orientation: int = 1) -> Path:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    exif = image.getexif()
    if orientation != 1:
        exif[0x0112] = orientation
    image.save(path, quality=90, exif=exif)
    return path


def _index(*records: DetectionRecord) -> DatasetIndex:
    return DatasetIndex(list(records), ["a", "b"], root=Path("."))


def test_sample_fields_and_clipping_without_transform(tmp_path: Path) -> None:
    path = _jpeg(tmp_path / "x.jpg", 40, 30)
    boxes = [[1, 2, 10, 20], [30, 20, 50, 40], [45, 1, 60, 5]]  # inside, sticking out, outside
    ds = DetectionDataset(_index(DetectionRecord(path, boxes, [0, 1, 1], image_id=7, width=40, height=30)))
    sample = ds[0]
    assert sample is not None and len(ds) == 1
    assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (3, 30, 40)
    assert sample["boxes"].tolist() == [[1, 2, 10, 20], [30, 20, 40, 30]] and sample["labels"].tolist() == [0, 1]
    assert sample["boxes"].dtype == torch.float32 and sample["labels"].dtype == torch.int64
    assert sample["image_id"] == 7 and sample["orig_size"] == (30, 40) and sample["path"] == str(path)
    # The index is not modified by clipping.
    assert ds.index.records[0].boxes.shape == (3, 4)


def test_exif_orientation_is_honoured(tmp_path: Path) -> None:
    path = _jpeg(tmp_path / "rot.jpg", 40, 20, orientation=6)  # stored 40x20, shown 20x40
    ds = DetectionDataset(_index(DetectionRecord(path, [[1, 1, 5, 5]], [0], image_id=1)))
    sample = ds[0]
    assert sample is not None and sample["image"].shape == (3, 40, 20) and sample["orig_size"] == (40, 20)


def test_transform_is_applied_and_checked(tmp_path: Path) -> None:
    path = _jpeg(tmp_path / "x.jpg", 40, 30)

    def flip(image: Tensor, boxes: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        w = image.shape[-1]
        return image.flip(-1), torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1), labels

    rec = DetectionRecord(path, [[1, 2, 10, 20], [30, 20, 50, 40]], [0, 1], image_id=1)
    sample = DetectionDataset(_index(rec), transform=flip)[0]
    assert sample is not None and sample["boxes"].tolist() == [[30, 2, 39, 20], [-10, 20, 10, 40]]  # not clipped

    def padded(image: Tensor, boxes: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor, tuple[int, int]]:
        canvas = image.new_zeros((3, 40, 50))
        canvas[:, :20, :20] = image[:, :20, :20]
        return canvas, boxes / 2, labels, (20, 20)

    ds = DetectionDataset(_index(rec), transform=padded)
    batch = collate_detections([ds[0], ds[0]])
    assert batch["content_sizes"] == [(20, 20), (20, 20)] and batch["images"].shape == (2, 3, 40, 50)

    def broken(image: Tensor, boxes: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return image, boxes[:1], labels

    with pytest.raises(ValueError, match="transform returned boxes"):
        DetectionDataset(_index(rec), transform=broken)[0]


def test_missing_image_returns_none_and_counts(tmp_path: Path) -> None:
    rec = DetectionRecord(tmp_path / "gone.jpg", [[1, 1, 5, 5]], [0], image_id=3)
    ds = DetectionDataset(_index(rec))
    with pytest.warns(DataIssue, match=r"gone\.jpg: record image_id=3: cannot load image \(file not found\)"):
        assert ds[0] is None
    assert ds.num_bad == 1 and ds.bad_paths == [str(tmp_path / "gone.jpg")]


def test_dataloader_skips_truncated_jpeg(tmp_path: Path) -> None:
    train = make_synthetic_dataset(tmp_path, num_images=5, image_size=(48, 64), seed=1)
    index = read_coco(train)
    bad = index.records[2].image_path
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    ds = DetectionDataset(index)
    loader = DataLoader(ds, batch_size=2, shuffle=False, num_workers=0, collate_fn=collate_detections)
    with pytest.warns(DataIssue) as caught:
        batches = list(loader)
    messages = [str(w.message) for w in caught if issubclass(w.category, DataIssue)]
    assert len(messages) == 1 and str(bad) in messages[0] and "image_id=3" in messages[0]
    assert ds.num_bad == 1
    ids = [i for b in batches for i in b["image_ids"]]
    assert ids == [1, 2, 4, 5]
    first = batches[0]
    assert first["images"].shape == (2, 3, 48, 64) and first["images"].dtype == torch.uint8
    assert [len(b) for b in first["boxes"]] == [r.num_objects for r in index.records[:2]]
    assert torch.equal(first["boxes"][0], index.records[0].boxes) and first["orig_sizes"][0] == (48, 64)
    assert batches[1]["images"].shape[0] == 1  # the batch that held the bad image


def test_collate_edge_cases(tmp_path: Path) -> None:
    empty = collate_detections([None, None])
    assert empty["images"].shape == (0, 3, 0, 0) and empty["boxes"] == [] and empty["image_ids"] == []
    ds = DetectionDataset(_index(
        DetectionRecord(_jpeg(tmp_path / "a.jpg", 40, 30), [], [], image_id=1),
        DetectionRecord(_jpeg(tmp_path / "b.jpg", 30, 40), [], [], image_id=2),
    ))
    with pytest.raises(ValueError, match="different sizes"):
        collate_detections([ds[0], ds[1]])
    one = collate_detections([ds[0]])
    assert one["boxes"][0].shape == (0, 4) and one["paths"] == [str(tmp_path / "a.jpg")]


def test_size_mismatch_warns_once(tmp_path: Path) -> None:
    rec = DetectionRecord(_jpeg(tmp_path / "a.jpg", 40, 30), [[1, 1, 5, 5]], [0], image_id=1, width=80, height=60)
    ds = DetectionDataset(_index(rec))
    with pytest.warns(DataIssue, match="annotated size 80x60 differs from the decoded 40x30"):
        ds[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataIssue)
        ds[0]


def test_size_mismatch_from_exif_rotation_says_so(tmp_path: Path) -> None:
    """A tool that recorded the stored (unrotated) size of an EXIF-rotated photo: the warning
    names the cause instead of only the two sizes."""
    from PIL import Image

    path = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to display
    Image.new("RGB", (40, 30), (10, 200, 90)).save(path, exif=exif.tobytes())
    rec = DetectionRecord(path, [[1, 1, 5, 5]], [0], image_id=1, width=40, height=30)
    with pytest.warns(DataIssue, match=r"annotated size 40x30 differs from the decoded 30x40 \(WxH\) \(sides swapped: the file's EXIF"):
        DetectionDataset(_index(rec))[0]
