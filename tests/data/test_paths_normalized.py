"""Paths the readers build (dataset root + relative name) have no ``..`` parts: messages show
``data/images/a.jpg``, not ``runs/x/../../data/images/a.jpg``."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from PIL import Image

from efficientdet.data.common import resolve_under
from efficientdet.data.formats import read_coco, read_voc, read_yolo


def _image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 24), (90, 120, 30)).save(path)
    return path


def test_resolve_under_normalises() -> None:
    assert resolve_under(Path("runs/x/../../data"), "images/./a.jpg", False) == Path("data/images/a.jpg")
    assert resolve_under(Path("/d/sub"), "../img/a.jpg", True) == Path("/d/img/a.jpg")
    assert resolve_under(Path("/d/sub"), "../img/a.jpg", False) is None  # still refused
    assert resolve_under(Path("/d"), "/abs/../b.jpg", True) == Path("/b.jpg")


def test_coco_paths_and_messages_have_no_dotdot(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _image(data / "images" / "a.jpg")
    images = [
        {"id": 1, "file_name": "images/a.jpg", "width": 32, "height": 24},
        {"id": 2, "file_name": "images/missing.jpg", "width": 32, "height": 24},
    ]
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10]}]
    (data / "ann.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "x"}]}))
    (tmp_path / "runs" / "x").mkdir(parents=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        index = read_coco(tmp_path / "runs" / "x" / ".." / ".." / "data" / "ann.json")
    assert [r.image_path for r in index.records] == [data / "images" / "a.jpg"]
    texts = [str(w.message) for w in caught]
    assert any(str(data / "images" / "missing.jpg") in t for t in texts), texts
    assert not any(".." in t for t in texts), texts


def test_voc_and_yolo_paths_have_no_dotdot(tmp_path: Path) -> None:
    voc = tmp_path / "voc"
    _image(voc / "JPEGImages" / "a.jpg")
    (voc / "Annotations").mkdir()
    (voc / "Annotations" / "a.xml").write_text(
        "<annotation><filename>a.jpg</filename><size><width>32</width><height>24</height></size>"
        "<object><name>x</name><bndbox><xmin>2</xmin><ymin>2</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object>"
        "</annotation>"
    )
    (tmp_path / "runs").mkdir()
    index = read_voc(tmp_path / "runs" / ".." / "voc" / "Annotations")
    assert [r.image_path for r in index.records] == [voc / "JPEGImages" / "a.jpg"]

    yolo = tmp_path / "yolo"
    _image(yolo / "images" / "train" / "b.jpg")
    (yolo / "labels" / "train").mkdir(parents=True)
    (yolo / "labels" / "train" / "b.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    index = read_yolo(tmp_path / "runs" / ".." / "yolo", split="train", names=["x"])
    assert [r.image_path for r in index.records] == [yolo / "images" / "train" / "b.jpg"]
