"""COCO reader and writer details: category names, what write_coco refuses to write."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from PIL import Image

from efficientdet.data.formats import DataIssue, DatasetIndex, DetectionRecord, read_coco, write_coco


def _record(path: Path, image_id: int) -> DetectionRecord:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48)).save(path)
    return DetectionRecord(path, [[2.0, 3.0, 20.0, 30.0]], [0], image_id=image_id, width=64, height=48)


def test_write_coco_refuses_a_repeated_image_id(tmp_path: Path) -> None:
    """Two YOLO splits merged (ids 0.. each): the file held id 0 twice; read back, b.jpg was
    dropped and its box drawn on a.jpg."""
    records = [_record(tmp_path / "train" / "a.jpg", 0), _record(tmp_path / "val" / "b.jpg", 0)]
    with pytest.raises(ValueError, match=r"image id 0 is used by both .*a\.jpg and .*b\.jpg"):
        write_coco(DatasetIndex(records, ["raccoon"]), tmp_path / "all.json")
    assert not (tmp_path / "all.json").exists()


def test_write_coco_round_trips(tmp_path: Path) -> None:
    records = [_record(tmp_path / "train" / "a.jpg", 0), _record(tmp_path / "val" / "b.jpg", 1)]
    back = read_coco(write_coco(DatasetIndex(records, ["raccoon"]), tmp_path / "all.json"))
    assert [r.image_path for r in back.records] == [r.image_path for r in records]
    assert [r.boxes.tolist() for r in back.records] == [[[2.0, 3.0, 20.0, 30.0]]] * 2 and back.class_names == ["raccoon"]


def test_categories_sharing_a_name_are_reported(tmp_path: Path) -> None:
    """Two category ids named 'raccoon' (merged exports) became two classes silently."""
    _record(tmp_path / "a.jpg", 1)
    doc = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [2, 3, 10, 20]}],
        "categories": [{"id": 7, "name": "raccoon"}, {"id": 3, "name": "raccoon"}, {"id": 5, "name": "cat"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        index = read_coco(tmp_path / "ann.json")
    messages = [str(w.message) for w in caught if issubclass(w.category, DataIssue)]
    assert index.class_names == ["raccoon", "cat", "raccoon"] and index.counts == {"duplicate_category": 1}
    assert messages == [
        f"{tmp_path / 'ann.json'}: categories id=3, id=7: same name 'raccoon'; "
        "read as 2 separate classes (give them one id, or distinct names)"
    ]
