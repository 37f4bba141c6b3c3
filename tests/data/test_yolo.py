"""YOLO reader details: where an image's label file is, round trips through write_yolo."""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image

from efficientdet.data.formats import DataIssue, read_dataset, read_yolo

W, H = 64, 48


def _image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (W, H), (30, 120, 200)).save(path)
    return path


def test_flat_folder_under_a_folder_named_images_reads_its_labels(tmp_path: Path) -> None:
    """labelImg's flat folder (a.jpg, a.txt, classes.txt) kept under ``~/images/``: the labels
    were looked for in ``~/labels/...`` (a folder above the dataset), every image background."""
    root = tmp_path / "images" / "raccoons"
    _image(root / "a.jpg")
    (root / "a.txt").write_text("0 0.5 0.5 0.25 0.5\n")
    (root / "classes.txt").write_text("raccoon\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataIssue)
        index = read_dataset(root)
    assert index.class_names == ["raccoon"] and index.records[0].boxes.tolist() == [[24.0, 12.0, 40.0, 36.0]]


def test_images_folder_inside_the_root_still_maps_to_labels(tmp_path: Path) -> None:
    """The usual ``images/train`` -> ``labels/train`` swap, also with a root under ``images/``."""
    root = tmp_path / "images" / "ds"
    _image(root / "images" / "train" / "a.jpg")
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    index = read_yolo(root, split="train")
    assert index.records[0].boxes.tolist() == [[16.0, 12.0, 48.0, 36.0]]


def test_data_yaml_nc_without_names_sets_the_class_count(tmp_path: Path) -> None:
    """``nc: 3`` and no names: the classes were "0".."largest id used", so a train split using
    only 0 and 1 made a 2-class model, and val's class 2 objects were dropped."""
    _image(tmp_path / "images" / "train" / "a.jpg")
    (tmp_path / "labels" / "train").mkdir(parents=True)
    (tmp_path / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n1 0.25 0.25 0.25 0.25\n")
    (tmp_path / "data.yaml").write_text("train: images/train\nnc: 3\n")
    index = read_yolo(tmp_path, split="train")
    assert index.class_names == ["0", "1", "2"] and index.records[0].labels.tolist() == [0, 1]
