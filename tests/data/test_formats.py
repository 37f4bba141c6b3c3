"""Tests for the COCO / VOC / YOLO readers and writers: conversions, bad input, round trips."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from efficientdet.data.formats import (
    DataIssue,
    DatasetIndex,
    detect_format,
    read_coco,
    read_dataset,
    read_split,
    read_voc,
    read_yolo,
    write_coco,
    write_voc,
    write_yolo,
)
from efficientdet.data.synthetic import make_synthetic_dataset

W, H = 64, 48


def _image(path: Path, size: tuple[int, int] = (W, H)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (30, 120, 200)).save(path)
    return path


def _messages(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, DataIssue)]


def _read(fn: Any, *args: Any, **kw: Any) -> tuple[DatasetIndex, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        index = fn(*args, **kw)
    return index, _messages(caught)


def _one_issue(messages: list[str], *fragments: str) -> str:
    """The single warning containing all fragments (file, record, problem)."""
    hits = [m for m in messages if all(f in m for f in fragments)]
    assert len(hits) == 1, f"want one warning with {fragments}, got {messages}"
    return hits[0]


# --------------------------------------------------------------------------- COCO

CATS = [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]  # unsorted ids on purpose


def _coco(tmp_path: Path, extra_anns: list[dict[str, Any]] = (), **changes: Any) -> Path:  # type: ignore[assignment]
    """3 images (64x48): a with 2 boxes + 1 crowd, b with 1 box, c a background image."""
    for n in "abc":
        _image(tmp_path / "imgs" / f"{n}.jpg")
    data: dict[str, Any] = {
        "images": [{"id": i + 1, "file_name": f"imgs/{n}.jpg", "width": W, "height": H} for i, n in enumerate("abc")],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 2, 10, 20], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 3, "bbox": [5.5, 6, 4.5, 4], "iscrowd": 0},
            {"id": 3, "image_id": 1, "category_id": 3, "bbox": [0, 0, 30, 30], "iscrowd": 1},
            {"id": 4, "image_id": 2, "category_id": 7, "bbox": [10, 10, 5, 5]},
            *extra_anns,
        ],
        "categories": CATS,
    }
    data.update(changes)
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_reads_labels_boxes_and_background(tmp_path: Path) -> None:
    index, messages = _read(read_coco, _coco(tmp_path))
    assert messages == [] and index.skipped == []
    assert index.class_names == ["cat", "dog"] and index.category_ids == [3, 7]
    assert [r.image_id for r in index.records] == [1, 2, 3]
    a, _, c = index.records
    assert torch.equal(a.boxes, torch.tensor([[1.0, 2, 11, 22], [5.5, 6, 10, 10]]))
    assert a.labels.tolist() == [1, 0] and a.labels.dtype == torch.int64 and a.boxes.dtype == torch.float32
    assert (a.width, a.height) == (W, H) and a.image_path == (tmp_path / "imgs" / "a.jpg").absolute()
    assert c.boxes.shape == (0, 4) and c.labels.shape == (0,)  # background image kept
    assert index.counts["crowd"] == 1 and index.root == tmp_path.absolute()


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "bbox, category, kept, fragment",
    [
        ([50, 40, 30, 30], 7, [50, 40, 64, 48], "clipped"),
        ([100, 100, 10, 10], 7, None, "outside"),
        ([10, 10, 0, 5], 7, None, "zero-area"),
        ([10, 10, -5, 5], 7, None, "inverted"),
        ([NAN, 1, 2, 3], 7, None, "non-finite"),
        ([1, 1, INF, 3], 7, None, "non-finite"),
        ([1, 2, 3, 4], 42, None, "unknown category_id 42"),
        ([1, 2, 3], 7, None, "malformed bbox"),
        (["1", "2", "3", "4"], 7, None, "malformed bbox"),
    ],
)
def test_coco_bad_annotation_is_reported_and_rest_kept(
    tmp_path: Path, bbox: list[Any], category: int, kept: list[float] | None, fragment: str
) -> None:
    bad = {"id": 99, "image_id": 1, "category_id": category, "bbox": bbox}
    path = _coco(tmp_path, [bad])
    index, messages = _read(read_coco, path)
    _one_issue(messages, str(path), "annotation id=99", fragment)
    assert len(index.skipped) == 1 and "annotation id=99" in index.skipped[0]
    assert [r.num_objects for r in index.records] == [3 if kept else 2, 1, 0]
    if kept:
        assert index.records[0].boxes[-1].tolist() == kept and index.counts["clipped"] == 1


def test_coco_annotation_for_unknown_image(tmp_path: Path) -> None:
    path = _coco(tmp_path, [{"id": 50, "image_id": 77, "category_id": 7, "bbox": [1, 1, 2, 2]}])
    index, messages = _read(read_coco, path)
    _one_issue(messages, str(path), "annotation id=50", "unknown image_id 77")
    assert [r.num_objects for r in index.records] == [2, 1, 0]


def test_coco_missing_image_duplicate_id_and_bad_entry(tmp_path: Path) -> None:
    images = [
        {"id": 1, "file_name": "imgs/a.jpg", "width": W, "height": H},
        {"id": 2, "file_name": "imgs/missing.jpg", "width": W, "height": H},
        {"id": 1, "file_name": "imgs/b.jpg", "width": W, "height": H},  # duplicate id
        {"id": "x", "file_name": "imgs/b.jpg"},
        {"id": 3, "file_name": "imgs/c.jpg"},  # no size: kept, boxes not clipped
    ]
    anns = [{"id": 10, "image_id": 2, "category_id": 7, "bbox": [1, 1, 5, 5]},
            {"id": 11, "image_id": 3, "category_id": 7, "bbox": [60, 1, 50, 5]}]
    path = _coco(tmp_path, images=images, annotations=anns)
    index, messages = _read(read_coco, path)
    _one_issue(messages, str(path), "image id=2", "not found")
    _one_issue(messages, str(path), "image id=1", "duplicate image id")
    _one_issue(messages, str(path), "image #3", "non-integer 'id'")
    assert len(messages) == 3  # the annotation of the missing image is not reported again
    assert [r.image_id for r in index.records] == [1, 3]
    assert index.records[1].boxes.tolist() == [[60, 1, 110, 6]] and index.records[1].width is None
    assert index.counts["missing_image"] == 1


@pytest.mark.parametrize("name", ["../outside.jpg", "imgs/../../outside.jpg", "ABSOLUTE"])
def test_coco_path_traversal_refused(tmp_path: Path, name: str) -> None:
    outside = _image(tmp_path / "outside.jpg")
    root = tmp_path / "ds"
    if name == "ABSOLUTE":
        name = str(outside)
    path = _coco(root, images=[{"id": 1, "file_name": "imgs/a.jpg"}, {"id": 2, "file_name": name}], annotations=[])
    index, messages = _read(read_coco, path)
    _one_issue(messages, str(path), "image id=2", "escapes")
    assert [r.image_id for r in index.records] == [1]
    allowed, _ = _read(read_coco, path, allow_outside_root=True)
    assert allowed.records[1].image_path.resolve() == outside.resolve()


def test_coco_malformed_json_raises_with_position(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"images": [\n  {"id": 1,, }]}')
    with pytest.raises(ValueError, match=r"bad\.json: malformed JSON at line 2 column"):
        read_coco(path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a COCO annotation file"):
        read_coco(path)


def test_coco_default_root_for_annotations_folder(tmp_path: Path) -> None:
    _image(tmp_path / "val2017" / "x.jpg")
    ann = tmp_path / "annotations" / "instances_val2017.json"
    ann.parent.mkdir()
    ann.write_text(json.dumps({"images": [{"id": 5, "file_name": "x.jpg"}], "annotations": [], "categories": CATS}))
    index, messages = _read(read_coco, ann)
    assert messages == [] and index.root == (tmp_path / "val2017").absolute() and len(index) == 1


def test_coco_whose_images_are_all_elsewhere_is_one_error_naming_where_it_looked(tmp_path: Path) -> None:
    # the json in ann/, its images in pics/: every image used to be one warning, then the
    # commands failed with "no images", with no word on where file_name is resolved
    _image(tmp_path / "pics" / "a.jpg")
    ann = tmp_path / "ann" / "val.json"
    ann.parent.mkdir()
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
                               "annotations": [], "categories": CATS}))  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(FileNotFoundError) as err:
            read_coco(ann)
    assert _messages(caught) == []
    text = str(err.value)
    assert text.startswith(f"{ann}: none of its 2 images was found (file_name 'a.jpg' looked for under any of ")
    assert f"{tmp_path / 'ann'}, {tmp_path / 'ann' / 'images'}" in text and "image_root=" in text
    with pytest.raises(FileNotFoundError, match=rf"looked for under {re.escape(str(tmp_path / 'ann'))}\)"):
        read_coco(ann, image_root=tmp_path / "ann")
    assert len(read_coco(ann, image_root=tmp_path / "pics")) == 1  # the one that exists; b.jpg warned


def test_many_issues_are_summarised(tmp_path: Path) -> None:
    bad = [{"id": 100 + i, "image_id": 1, "category_id": 42, "bbox": [1, 1, 2, 2]} for i in range(60)]
    index, messages = _read(read_coco, _coco(tmp_path, bad))
    assert len(index.skipped) == 60 and len(messages) == 51 and "10 more data issues" in messages[-1]


# --------------------------------------------------------------------------- VOC


def _voc_xml(filename: str, objects: list[tuple[str, Any]] = (), size: bool = True, difficult: int = 0) -> str:  # type: ignore[assignment]
    objs = "".join(
        f"<object><name>{n}</name><difficult>{difficult}</difficult><bndbox><xmin>{b[0]}</xmin>"
        f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b in objects
    )
    size_xml = f"<size><width>{W}</width><height>{H}</height><depth>3</depth></size>" if size else ""
    return f"<annotation><folder>VOC2007</folder><filename>{filename}</filename>{size_xml}{objs}</annotation>"


def _voc(tmp_path: Path, extra: dict[str, str] = {}) -> Path:  # noqa: B006 - read only
    """VOC2007-style root: a (2 objects, one difficult), b (no size tag), c (background)."""
    root = tmp_path / "VOC2007"
    files = {
        "a": _voc_xml("a.jpg", [("dog", (1, 1, 10, 20)), ("cat", (5, 6, 64, 48))]),
        "b": _voc_xml("b.jpg", [("cat", (2, 3, 4, 5))], size=False, difficult=1),
        "c": _voc_xml("c.jpg"),
        **extra,
    }
    for stem, xml in files.items():
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{stem}.xml").write_text(xml)
        _image(root / "JPEGImages" / f"{stem}.jpg")
    return root


def test_voc_reads_one_based_corners_difficult_and_background(tmp_path: Path) -> None:
    root = _voc(tmp_path)
    index, messages = _read(read_voc, root / "Annotations")
    assert messages == [] and index.class_names == ["cat", "dog"] and index.category_ids is None
    a, b, c = index.records
    assert a.boxes.tolist() == [[0, 0, 10, 20], [4, 5, 64, 48]] and a.labels.tolist() == [1, 0]
    assert b.boxes.tolist() == [[1, 2, 4, 5]] and (b.width, b.height) == (W, H)  # size from header
    assert c.num_objects == 0 and index.counts["difficult"] == 1
    assert a.image_path == (root / "JPEGImages" / "a.jpg").absolute()
    raw, _ = _read(read_voc, root / "Annotations", one_based=False)
    assert raw.records[0].boxes[0].tolist() == [1, 1, 10, 20]


def test_voc_split_file_with_duplicate_and_missing_xml(tmp_path: Path) -> None:
    root = _voc(tmp_path)
    split = root / "ImageSets" / "Main" / "train.txt"
    split.parent.mkdir(parents=True)
    split.write_text("c\na  1\n\nc\nzzz\n")
    index, messages = _read(read_voc, root / "Annotations", root / "JPEGImages", split)
    _one_issue(messages, str(split), "line 4", "duplicate image id 'c'")
    _one_issue(messages, "image id 'zzz'", "zzz.xml", "not found")
    assert [r.image_path.stem for r in index.records] == ["c", "a"]


@pytest.mark.parametrize(
    "objects, record, fragment",
    [
        ([("dog", (1, 1, 8, 8)), ("bird", (1, 1, 8, 8))], "object #2 ('bird')", "unknown class name 'bird'"),
        ([("dog", ("x", 1, 8, 8))], "object #1 ('dog')", "non-numeric <bndbox>"),
        ([("dog", ("nan", 1, 8, 8))], "object #1 ('dog')", "non-finite"),
        ([("dog", (9, 1, 3, 8))], "object #1 ('dog')", "inverted"),
        ([("dog", (1, 1, 90, 8))], "object #1 ('dog')", "clipped to [0, 0, 64, 8]"),
        ([("", (1, 1, 8, 8))], "object #1", "missing <name>"),
    ],
)
def test_voc_bad_object_is_reported_and_rest_kept(tmp_path: Path, objects: Any, record: str, fragment: str) -> None:
    root = _voc(tmp_path, {"d": _voc_xml("d.jpg", objects)})
    index, messages = _read(read_voc, root / "Annotations", class_names=["cat", "dog"])
    _one_issue(messages, str(root / "Annotations" / "d.xml"), record, fragment)
    assert [r.num_objects for r in index.records[:3]] == [2, 1, 0] and len(index) == 4


@pytest.mark.parametrize(
    "xml, fragment",
    [
        ("<annotation><filename>d.jpg</filename><object>", "malformed XML at line 1"),
        ('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;">]><annotation>&b;</annotation>',
         "forbidden XML construct"),
        ("<notvoc/>", "not <annotation>"),
        (_voc_xml("missing.jpg", [("dog", (1, 1, 8, 8))]), "image file not found"),
        (_voc_xml("../../outside.jpg", [("dog", (1, 1, 8, 8))]), "escapes the dataset root"),
    ],
)
def test_voc_bad_file_skips_that_image(tmp_path: Path, xml: str, fragment: str) -> None:
    _image(tmp_path / "outside.jpg")
    root = _voc(tmp_path, {"d": xml})
    index, messages = _read(read_voc, root / "Annotations")
    _one_issue(messages, str(root / "Annotations" / "d.xml"), fragment)
    assert [r.image_path.stem for r in index.records] == ["a", "b", "c"]


# --------------------------------------------------------------------------- YOLO


def _yolo(tmp_path: Path, labels: dict[str, str], names: Any = ("cat", "dog")) -> Path:
    root = tmp_path / "yolo"
    for stem, text in labels.items():
        _image(root / "images" / "train" / f"{stem}.jpg")
        if text is not None:
            (root / "labels" / "train").mkdir(parents=True, exist_ok=True)
            (root / "labels" / "train" / f"{stem}.txt").write_text(text)
    if names is not None:
        (root / "data.yaml").write_text(json.dumps({"train": "images/train", "names": names}))  # JSON is YAML
    return root


def test_yolo_reads_normalised_boxes_names_and_background(tmp_path: Path) -> None:
    root = _yolo(tmp_path, {"a": "1 0.5 0.5 0.25 0.5\n0 0.1 0.1 0.1 0.1\n", "b": "", "c": None,
                            "d": "0 0.1 0.1 0.3 0.1 0.3 0.5\n"})
    index, messages = _read(read_yolo, root)
    assert messages == [] and index.class_names == ["cat", "dog"]
    a, b, c, d = index.records
    assert torch.allclose(a.boxes, torch.tensor([[24.0, 12, 40, 36], [3.2, 2.4, 9.6, 7.2]]))
    assert a.labels.tolist() == [1, 0] and (a.width, a.height) == (W, H)
    assert b.num_objects == 0 and c.num_objects == 0  # empty and missing label files
    assert torch.allclose(d.boxes, torch.tensor([[6.4, 4.8, 19.2, 24.0]]))  # polygon -> its box


@pytest.mark.parametrize(
    "names, where",
    [({0: "cat", 1: "dog"}, "yaml"), (None, "classes.txt"), (None, "argument"), (None, "none")],
)
def test_yolo_class_name_sources(tmp_path: Path, names: Any, where: str) -> None:
    root = _yolo(tmp_path, {"a": "1 0.5 0.5 0.2 0.2\n"}, names=names)
    if where == "classes.txt":
        (root / "classes.txt").write_text("cat\ndog\n")
    index, _ = _read(read_yolo, root, names=["cat", "dog"] if where == "argument" else None)
    assert index.class_names == (["0", "1"] if where == "none" else ["cat", "dog"])


def test_yolo_flat_layout_without_split(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    _image(root / "images" / "x.jpg")
    (root / "labels").mkdir()
    (root / "labels" / "x.txt").write_text("0 0.5 0.5 1 1\n")
    (root / "classes.txt").write_text("thing\n")
    for split in ("train", None):
        index, _ = _read(read_yolo, root, split=split)
        assert index.records[0].boxes.tolist() == [[0, 0, W, H]] and index.class_names == ["thing"]
    _image(root / "images" / "x.png")  # same stem, so the same label file: a duplicate
    index, messages = _read(read_yolo, root, split=None)
    _one_issue(messages, str(root / "images" / "x.png"), "shares label file x.txt")
    assert [r.image_path.name for r in index.records] == ["x.jpg"]


@pytest.mark.parametrize(
    "line, fragment, kept",
    [
        ("0 0.5 0.5 0.2", "got 4 values", None),
        ("0 0.5 abc 0.2 0.2", "non-numeric", None),
        ("7 0.5 0.5 0.2 0.2", "class id 7 not in the 2 class names", None),
        ("-1 0.5 0.5 0.2 0.2", "invalid class id", None),
        ("0 nan 0.5 0.2 0.2", "non-finite", None),
        ("0 0.5 0.5 0 0.2", "zero-area", None),
        ("0 0.9 0.5 0.4 0.2", "clipped", [44.8, 19.2, 64, 28.8]),
    ],
)
def test_yolo_bad_line_is_reported_and_rest_kept(tmp_path: Path, line: str, fragment: str, kept: Any) -> None:
    root = _yolo(tmp_path, {"a": "1 0.5 0.5 0.25 0.5\n", "b": f"0 0.5 0.5 0.5 0.5\n{line}\n1 0.5 0.5 1 1\n"})
    index, messages = _read(read_yolo, root)
    _one_issue(messages, str(root / "labels" / "train" / "b.txt"), "line 2", fragment)
    a, b = index.records
    assert a.num_objects == 1 and b.labels.tolist() == ([0, 0, 1] if kept else [0, 1])
    if kept:
        assert torch.allclose(b.boxes[1], torch.tensor(kept))


def test_yolo_list_file_missing_corrupt_and_escaping_images(tmp_path: Path) -> None:
    root = _yolo(tmp_path, {"a": "0 0.5 0.5 0.5 0.5\n", "b": "1 0.5 0.5 0.5 0.5\n"})
    (root / "images" / "train" / "bad.jpg").write_bytes(b"not an image at all")
    _image(tmp_path / "outside.jpg")
    lst = root / "train.txt"
    lst.write_text("images/train/a.jpg\n./images/train/gone.jpg\n../outside.jpg\nimages/train/bad.jpg\n"
                   "images/train/b.jpg\nimages/train/a.jpg\n")
    index, messages = _read(read_yolo, root, split="train.txt")
    _one_issue(messages, "gone.jpg", "not found")
    _one_issue(messages, str(lst), "line 3", "escapes")
    _one_issue(messages, "bad.jpg", "not an image")
    _one_issue(messages, str(lst), "line 6", "duplicate image")
    assert [r.image_path.stem for r in index.records] == ["a", "b"]


def test_yolo_unreadable_yaml_raises(tmp_path: Path) -> None:
    root = _yolo(tmp_path, {"a": ""}, names=None)
    (root / "data.yaml").write_text("names: [a, b\n  oops: ]")
    with pytest.raises(ValueError, match=re.escape("data.yaml: unreadable YAML")):
        read_yolo(root)


# --------------------------------------------------------------------------- detection, round trips


def test_read_dataset_detects_formats(tmp_path: Path) -> None:
    coco = _coco(tmp_path / "c")
    voc = _voc(tmp_path / "v")
    yolo = _yolo(tmp_path / "y", {"a": "0 0.5 0.5 0.5 0.5\n"})
    assert [detect_format(p) for p in (coco, voc, voc / "Annotations", yolo)] == ["coco", "voc", "voc", "yolo"]
    assert len(read_dataset(coco)) == 3 and len(read_dataset(voc)) == 3 and len(read_dataset(yolo)) == 1
    with pytest.warns(DataIssue, match="unknown class name 'cat'"):
        spec = read_dataset({"format": "voc", "path": voc / "Annotations", "class_names": ["dog"]})
    assert spec.class_names == ["dog"]
    with pytest.raises(ValueError, match="cannot tell the dataset format"):
        detect_format(tmp_path / "c" / "imgs")


def test_voc_tutorial_layout_with_lowercase_folders_and_splits(tmp_path: Path) -> None:
    """``annotations/ images/ splits/<split>.txt`` (e.g. the raccoon dataset) reads as VOC, and
    ``eval`` takes its val split by default."""
    from efficientdet.cli.evaluate import load_index

    root = tmp_path / "raccoon"
    (root / "annotations").mkdir(parents=True)
    for stem in ("r1", "r2", "r3"):
        (root / "annotations" / f"{stem}.xml").write_text(_voc_xml(f"{stem}.jpg", [("raccoon", (2, 3, 30, 40))]))
        _image(root / "images" / f"{stem}.jpg")
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("r1\nr2\n")
    (root / "splits" / "val.txt").write_text("r3\n")
    assert detect_format(root) == "voc"
    index, messages = _read(read_dataset, root, split="train")
    assert messages == [] and [r.image_path.name for r in index.records] == ["r1.jpg", "r2.jpg"]
    assert index.records[0].image_path == (root / "images" / "r1.jpg").absolute()
    assert index.records[0].boxes.tolist() == [[1, 2, 30, 40]]
    val, fmt = load_index(str(root), None)
    assert fmt == "voc" and [r.image_path.stem for r in val.records] == ["r3"]
    assert len(read_dataset(root)) == 3  # no split: every XML
    assert [r.image_path.stem for r in read_split(root, "train").records] == ["r1", "r2"]  # train's reader
    assert len(read_split(root, "test")) == 3  # no such list: every XML
    # a split asked for by name (eval --split test) that has no list names both places looked in
    with pytest.raises(FileNotFoundError) as err:
        read_dataset(root, split="test")
    tried = f"{root / 'ImageSets' / 'Main' / 'test.txt'}, {root / 'splits' / 'test.txt'}"
    assert str(err.value) == f"{root}: no list of VOC split 'test' (tried {tried})"
    # an official ImageSets/Main list wins over splits/ when both exist
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("r3\n")
    assert [r.image_path.stem for r in read_dataset(root, split="train").records] == ["r3"]


def test_read_split_picks_each_formats_split(tmp_path: Path) -> None:
    coco = make_synthetic_dataset(tmp_path / "syn", num_images=5, image_size=(40, 48), seed=1)
    index = read_coco(coco)
    train, val = DatasetIndex(index.records[:3], index.class_names), DatasetIndex(index.records[3:], index.class_names)
    write_yolo(train, tmp_path / "yolo", split="train")
    write_yolo(val, tmp_path / "yolo", split="val")
    assert (len(read_split(tmp_path / "yolo", "train")), len(read_split(tmp_path / "yolo", "val"))) == (3, 2)
    spec = {"path": str(tmp_path / "yolo"), "split": "train"}  # a spec's own split wins
    assert len(read_split(spec, "val")) == 3
    assert len(read_split(coco, "val")) == 5  # COCO: the file is the split


def _assert_same(a: DatasetIndex, b: DatasetIndex) -> None:
    assert a.class_names == b.class_names and len(a) == len(b)
    for ra, rb in zip(a.records, b.records):
        assert ra.image_path.stem.endswith(rb.image_path.stem) or rb.image_path.stem.endswith(ra.image_path.stem)
        assert (ra.width, ra.height) == (rb.width, rb.height)
        assert torch.equal(ra.labels, rb.labels)
        assert torch.allclose(ra.boxes, rb.boxes, atol=1e-3, rtol=0), (ra.boxes, rb.boxes)


@pytest.mark.parametrize("fractional", [False, True])
def test_round_trip_coco_voc_yolo(tmp_path: Path, fractional: bool) -> None:
    train = make_synthetic_dataset(tmp_path / "syn", num_images=5, image_size=(72, 96), min_objects=0, seed=3)
    index = read_coco(train)
    assert any(r.num_objects == 0 for r in index.records) and index.num_objects > 3
    if fractional:  # sub-pixel boxes survive every writer within 1e-3 px
        for r in index.records:
            r.boxes = (r.boxes + torch.tensor([0.3137, 0.25, -0.4171, -0.1234])).float()
    write_coco(index, tmp_path / "coco" / "ann.json", image_root=tmp_path / "syn")
    coco = read_coco(tmp_path / "coco" / "ann.json", image_root=tmp_path / "syn")
    write_voc(index, tmp_path / "voc", split="train")
    voc = read_dataset(tmp_path / "voc", split="train", class_names=index.class_names)
    write_yolo(index, tmp_path / "yolo", split="train")
    yolo = read_yolo(tmp_path / "yolo", split="train")
    for other in (coco, voc, yolo):
        assert other.skipped == []
        _assert_same(index, other)
    assert coco.category_ids == index.category_ids == [1, 2, 3]
