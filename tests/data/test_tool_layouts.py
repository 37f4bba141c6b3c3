"""Dataset layouts that common tools write (Roboflow, Ultralytics, Colab, labelImg) read as the
tool meant them: every image and box, no warning."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from efficientdet.data.formats import (
    DataIssue,
    DatasetIndex,
    detect_format,
    read_dataset,
    read_split,
    read_voc,
    write_voc,
)

W, H = 64, 48


def _image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (W, H), (30, 120, 200)).save(path)
    return path


def _read(fn: object, *args: object, **kw: object) -> tuple[DatasetIndex, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        index = fn(*args, **kw)  # type: ignore[operator]
    return index, [str(w.message) for w in caught if issubclass(w.category, DataIssue)]


def _yolo_split(folder: Path, names: list[str]) -> None:
    """``folder/images/<name>.jpg`` with one box each in ``folder/labels/<name>.txt``."""
    for n in names:
        _image(folder / "images" / f"{n}.jpg")
        (folder / "labels").mkdir(exist_ok=True)
        (folder / "labels" / f"{n}.txt").write_text("0 0.5 0.5 0.25 0.5\n")


def test_roboflow_yolo_export_reads_train_and_valid(tmp_path: Path) -> None:
    """Roboflow: ``train: ../train/images``, ``val: ../valid/images`` beside ``train/`` and
    ``valid/`` (Ultralytics reads them under the yaml's folder). ``val`` found nothing before."""
    _yolo_split(tmp_path / "train", ["a", "b", "c"])
    _yolo_split(tmp_path / "valid", ["d", "e"])
    (tmp_path / "data.yaml").write_text(
        "train: ../train/images\nval: ../valid/images\ntest: ../test/images\n\nnc: 1\nnames: ['raccoon']\n"
    )
    train, train_msgs = _read(read_split, tmp_path, "train")
    val, val_msgs = _read(read_split, tmp_path / "data.yaml", "val")
    assert [r.image_path.name for r in train.records] == ["a.jpg", "b.jpg", "c.jpg"]
    assert [r.image_path.name for r in val.records] == ["d.jpg", "e.jpg"]
    assert val.records[0].boxes.tolist() == [[24.0, 12.0, 40.0, 36.0]] and val.class_names == ["raccoon"]
    assert train_msgs == [] and val_msgs == []


def test_yolo_absolute_split_entries_inside_the_root_are_read(tmp_path: Path) -> None:
    """``train: /content/data/images/train`` (Colab, older Ultralytics) names a folder inside the
    dataset: read without the "escapes the dataset root" warning; one outside still warns."""
    root = tmp_path / "data"
    _yolo_split(root / "sets" / "one", ["a", "b"])
    _yolo_split(tmp_path / "elsewhere", ["x"])
    (root / "data.yaml").write_text(
        f"train: {root / 'sets' / 'one' / 'images'}\nval: {tmp_path / 'elsewhere' / 'images'}\nnames: [raccoon]\n"
    )
    index, messages = _read(read_split, root, "train")
    assert [r.image_path for r in index.records] == [root / "sets/one/images/a.jpg", root / "sets/one/images/b.jpg"]
    assert [r.num_objects for r in index.records] == [1, 1] and messages == []
    (root / "images" / "val").mkdir(parents=True)
    _, messages = _read(read_split, root, "val")
    assert len(messages) == 1 and "escapes the dataset root" in messages[0]


def _voc_xml(folder: Path, stem: str, label: str) -> None:
    """``folder/<stem>.xml``: one ``label`` box [2, 3, 20, 30] on ``<stem>.jpg`` of W x H."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.xml").write_text(
        f"<annotation><filename>{stem}.jpg</filename><size><width>{W}</width><height>{H}</height></size>"
        f"<object><name>{label}</name><bndbox><xmin>2</xmin><ymin>3</ymin><xmax>20</xmax><ymax>30</ymax>"
        "</bndbox></object></annotation>"
    )


def test_voc_split_file_with_spaces_in_image_ids(tmp_path: Path) -> None:
    """labelImg keeps a photo's name ("IMG 0001.jpg") as the XML stem; write_voc's split list
    then holds "IMG 0001", which read back as "IMG" (not found) before."""
    src = tmp_path / "src"
    for n in ("IMG 0001", "plain", "raton laveur é"):
        _image(src / "JPEGImages" / f"{n}.jpg")
        _voc_xml(src / "Annotations", n, "Stop Sign")
    out = tmp_path / "out"
    write_voc(read_voc(src / "Annotations"), out, split="train")
    index, messages = _read(read_dataset, out, split="train")
    assert [r.image_path.name for r in index.records] == ["IMG 0001.jpg", "plain.jpg", "raton laveur é.jpg"]
    assert [r.boxes.tolist() for r in index.records] == [[[1.0, 2.0, 20.0, 30.0]]] * 3 and messages == []
    (out / "ImageSets" / "Main" / "dog_train.txt").write_text("plain  1\nIMG 0001 -1\n")  # class lists still work
    index, messages = _read(read_dataset, out, split="dog_train")
    assert [r.image_path.name for r in index.records] == ["plain.jpg"] and messages[0].endswith(
        "annotation file IMG.xml not found; image skipped"
    )


def test_darknet_folder_with_classes_txt_is_yolo(tmp_path: Path) -> None:
    """labelImg's YOLO mode and darknet: images, ``<name>.txt`` and ``classes.txt`` side by side."""
    for n in ("a", "b"):
        _image(tmp_path / f"{n}.jpg")
        (tmp_path / f"{n}.txt").write_text("1 0.5 0.5 0.25 0.5\n")
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    assert detect_format(tmp_path) == "yolo"
    index, messages = _read(read_split, tmp_path, "train")
    assert [r.labels.tolist() for r in index.records] == [[1], [1]] and index.class_names == ["cat", "dog"]
    assert messages == []


def test_ultralytics_yaml_path_key(tmp_path: Path) -> None:
    """``path:`` is Ultralytics' dataset root: followed inside the yaml's folder (or anywhere with
    allow_outside_root); outside it, the error says so. Before, it was ignored and the reader fell
    back to the yaml's folder: "no images" for a yaml kept apart from its data."""
    data = tmp_path / "datasets" / "mine"
    _yolo_split(data / "train", ["a", "b"])
    yaml_text = "path: {}\ntrain: train/images\nval: val/images\nnames: [raccoon]\n"
    (tmp_path / "inside.yaml").write_text(yaml_text.format("datasets/mine"))
    index, messages = _read(read_split, tmp_path / "inside.yaml", "train")
    assert [r.image_path for r in index.records] == [data / "train/images/a.jpg", data / "train/images/b.jpg"]
    assert messages == []
    project = tmp_path / "project"
    project.mkdir()
    (project / "mine.yaml").write_text(yaml_text.format(data))
    with pytest.raises(FileNotFoundError, match=r"no images for split 'train' .*path: .*mine lies outside .*allow_outside_root"):
        read_split(project / "mine.yaml", "train")
    allowed, _ = _read(read_split, project / "mine.yaml", "train", allow_outside_root=True)
    assert len(allowed) == 2 and sum(r.num_objects for r in allowed.records) == 2
    (project / "stale.yaml").write_text(yaml_text.format("/content/gone"))  # another machine's path: ignored
    _yolo_split(project / "train", ["c"])
    assert [r.image_path.name for r in read_split(project / "stale.yaml", "train").records] == ["c.jpg"]


def test_yolo_split_named_in_yaml_but_missing_is_an_error(tmp_path: Path) -> None:
    """``val: images/val`` that is not there must not read every image of the folder instead."""
    _yolo_split(tmp_path, ["a"])
    (tmp_path / "data.yaml").write_text("train: images\nval: images/val\nnames: [raccoon]\n")
    assert len(read_split(tmp_path, "train")) == 1
    with pytest.raises(FileNotFoundError, match=r"no images for split 'val' \(tried [^,]*images/val, "):
        read_split(tmp_path, "val")


def test_yolo_split_named_in_yaml_but_missing_names_the_folder_read_instead(tmp_path: Path) -> None:
    """``val: images/valid`` (a typo, a renamed folder) beside ``images/val``: the conventional
    folder was read in its place without a word, whatever it held."""
    _image(tmp_path / "images" / "train" / "a.jpg")
    _image(tmp_path / "images" / "val" / "b.jpg")
    (tmp_path / "labels" / "val").mkdir(parents=True)
    (tmp_path / "labels" / "val" / "b.txt").write_text("0 0.5 0.5 0.25 0.5\n")
    (tmp_path / "data.yaml").write_text("train: images/train\nval: images/valid\nnames: [raccoon]\n")
    index, messages = _read(read_split, tmp_path, "val")
    assert [r.image_path.name for r in index.records] == ["b.jpg"] and index.num_objects == 1
    assert messages == [
        f"{tmp_path}: data.yaml val: {tmp_path / 'images' / 'valid'}: not found; read {tmp_path / 'images' / 'val'} instead"
    ]


def test_voc_difficult_flags_are_read_and_written_back(tmp_path: Path) -> None:
    """VOC2007's ``<difficult>1</difficult>``: kept for training, flagged for the VOC metric."""
    _image(tmp_path / "JPEGImages" / "a.jpg")
    obj = "<object><name>dog</name><difficult>{}</difficult><bndbox><xmin>2</xmin><ymin>3</ymin><xmax>{}</xmax><ymax>30</ymax></bndbox></object>"
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations" / "a.xml").write_text(
        f"<annotation><filename>a.jpg</filename>{obj.format(0, 20)}{obj.format(1, 40)}{obj.format(0, 50)}</annotation>"
    )
    index, messages = _read(read_dataset, tmp_path)
    assert index.records[0].difficult.tolist() == [False, True, False] and index.records[0].num_objects == 3
    assert messages == [] and index.counts["difficult"] == 1
    write_voc(index, tmp_path / "out")
    again, _ = _read(read_dataset, tmp_path / "out")
    assert again.records[0].difficult.tolist() == [False, True, False]
    assert torch.equal(again.records[0].boxes, index.records[0].boxes)


def test_yolo_split_where_no_image_has_a_label_file_warns_once(tmp_path: Path) -> None:
    """``Labels/`` instead of ``labels/`` (or labels left elsewhere): every image would be read as
    background, silently (only counted). One warning names where labels were looked for."""
    _yolo_split(tmp_path, ["a", "b"])
    (tmp_path / "data.yaml").write_text("train: images\nnames: [raccoon]\n")
    (tmp_path / "labels").rename(tmp_path / "Labels")
    index, messages = _read(read_split, tmp_path, "train")
    assert len(index) == 2 and index.num_objects == 0
    assert messages == [
        f"{tmp_path}: split 'train': none of the 2 images has a label file (looked for "
        f"{tmp_path / 'labels' / 'a.txt'}, ...); every image read as background (no objects)"
    ]
    (tmp_path / "Labels").rename(tmp_path / "labels")
    (tmp_path / "labels" / "a.txt").write_text("")  # negatives with (empty) label files: legal, quiet
    (tmp_path / "labels" / "b.txt").write_text("")
    assert _read(read_split, tmp_path, "train")[1] == []


def test_voc_class_names_differing_only_in_case_are_reported(tmp_path: Path) -> None:
    """labelImg users type the class: "Raccoon" and "raccoon" become two classes; say so once."""
    (tmp_path / "Annotations").mkdir()
    for stem, name in (("a", "raccoon"), ("b", "Raccoon"), ("c", "Stop Sign"), ("d", "stop  sign")):
        _image(tmp_path / "JPEGImages" / f"{stem}.jpg")
        (tmp_path / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.jpg</filename><object><name>{name}</name><bndbox><xmin>2</xmin>"
            "<ymin>3</ymin><xmax>20</xmax><ymax>30</ymax></bndbox></object></annotation>"
        )
    index, messages = _read(read_dataset, tmp_path)
    assert index.class_names == ["Raccoon", "Stop Sign", "raccoon", "stop  sign"] and index.num_objects == 4
    ann = tmp_path / "Annotations"
    assert messages == [
        f"{ann}: class names: 'Raccoon', 'raccoon' differ only in case or spacing; read as 2 separate classes "
        "(edit the XML files to merge them)",
        f"{ann}: class names: 'Stop Sign', 'stop  sign' differ only in case or spacing; read as 2 separate classes "
        "(edit the XML files to merge them)",
    ]


def test_yolo_split_listing_several_folders_reads_them_all(tmp_path: Path) -> None:
    """Ultralytics' ``train: [images/a, images/b]`` (several sources): only the first was read,
    silently; a listed folder that is missing is reported."""
    _yolo_split(tmp_path / "one", ["a", "b"])
    _yolo_split(tmp_path / "two", ["c"])
    (tmp_path / "list.txt").write_text("two/images/c.jpg\none/images/a.jpg\n")
    (tmp_path / "data.yaml").write_text(
        "train: [one/images, two/images]\nval: [one/images, list.txt, gone/images]\nnames: [raccoon]\n"
    )
    index, messages = _read(read_split, tmp_path, "train")
    assert [r.image_path.name for r in index.records] == ["a.jpg", "b.jpg", "c.jpg"] and index.num_objects == 3
    assert messages == []
    index, messages = _read(read_split, tmp_path, "val")
    assert [r.image_path.name for r in index.records] == ["a.jpg", "b.jpg", "c.jpg"]  # a.jpg once
    assert messages == [f"{tmp_path}: data.yaml val: {tmp_path / 'gone' / 'images'}: not found; entry ignored"]


@pytest.mark.parametrize("json_name", ["labels/train.json", "annotations/instances_train.json", "labels/train.json@"])
def test_coco_json_beside_its_images_folder(tmp_path: Path, json_name: str) -> None:
    """``labels/train.json`` beside ``images/train/`` (converters' layout) was read against
    ``labels/``: every image missing, 'no images'. ``@``: the images in ``train/`` instead."""
    folder = tmp_path / "train" if json_name.endswith("@") else tmp_path / "images" / "train"
    _image(folder / "x.jpg")
    ann = tmp_path / json_name.rstrip("@")
    ann.parent.mkdir()
    coco = {"images": [{"id": 5, "file_name": "x.jpg"}], "annotations": [], "categories": [{"id": 1, "name": "a"}]}
    ann.write_text(json.dumps(coco))
    index, messages = _read(read_dataset, ann)
    assert messages == [] and index.root == folder.absolute() and len(index) == 1


def test_cvat_yolo_1_1_export_reads_its_obj_data_lists(tmp_path: Path) -> None:
    """CVAT's "YOLO 1.1" (darknet) export: ``obj.data`` names ``data/train.txt``, whose lines
    are ``data/obj_train_data/a.jpg`` (darknet's working folder holds the export as ``data/``),
    labels beside the images. No split was found before ("no images for split 'train'")."""
    for split, names in (("train", ["a", "b"]), ("valid", ["c"])):
        for n in names:
            _image(tmp_path / f"obj_{split}_data" / f"{n}.jpg")
            (tmp_path / f"obj_{split}_data" / f"{n}.txt").write_text("1 0.5 0.5 0.25 0.5\n")
        lines = "".join(f"data/obj_{split}_data/{n}.jpg\n" for n in names)
        (tmp_path / f"{split}.txt").write_text(lines)
    (tmp_path / "obj.names").write_text("cat\ndog\n")
    (tmp_path / "obj.data").write_text(
        "classes = 2\ntrain = data/train.txt\nvalid = data/valid.txt\nnames = data/obj.names\nbackup = backup/\n"
    )
    assert detect_format(tmp_path) == "yolo"
    train, train_msgs = _read(read_split, tmp_path, "train")
    val, val_msgs = _read(read_split, tmp_path, "val")
    assert train_msgs == val_msgs == []
    assert [r.image_path for r in train.records] == [tmp_path / "obj_train_data" / f"{n}.jpg" for n in "ab"]
    assert [r.image_path.name for r in val.records] == ["c.jpg"] and val.class_names == ["cat", "dog"]
    assert val.records[0].boxes.tolist() == [[24.0, 12.0, 40.0, 36.0]] and val.records[0].labels.tolist() == [1]


def test_darknet_split_lists_beside_the_images_without_a_data_file(tmp_path: Path) -> None:
    # train.txt / val.txt listing images (the darknet layout without obj.data)
    for n in ("a", "b", "c"):
        _image(tmp_path / "imgs" / f"{n}.jpg")
        (tmp_path / "imgs" / f"{n}.txt").write_text("0 0.5 0.5 0.25 0.5\n")
    (tmp_path / "classes.txt").write_text("raccoon\n")
    (tmp_path / "train.txt").write_text("imgs/a.jpg\nimgs/b.jpg\n")
    (tmp_path / "val.txt").write_text("imgs/c.jpg\n")
    train, msgs = _read(read_split, tmp_path, "train")
    val, _ = _read(read_split, tmp_path, "val")
    assert msgs == [] and [r.image_path.name for r in train.records] == ["a.jpg", "b.jpg"]
    assert [r.image_path.name for r in val.records] == ["c.jpg"]
    flat = tmp_path / "flat"  # images side by side, one named train.jpg: train.txt is its label file
    for n in ("train", "x"):
        _image(flat / f"{n}.jpg")
        (flat / f"{n}.txt").write_text("0 0.5 0.5 0.25 0.5\n")
    (flat / "classes.txt").write_text("raccoon\n")
    index, msgs = _read(read_split, flat, "train")
    assert msgs == [] and [r.image_path.name for r in index.records] == ["train.jpg", "x.jpg"]


def test_a_flat_yolo_folder_stays_readable_with_a_sub_folder_in_it(tmp_path: Path) -> None:
    """A flat darknet / labelImg folder holding a training run's output (``train --data flat
    --output flat/runs/a``) or any other sub-folder: it read as "no images for split 'train'"
    from then on (``--resume`` of that run too); the sub-folder's images are not the dataset's."""
    flat = tmp_path / "flat"
    for n in ("a", "b"):
        _image(flat / f"{n}.jpg")
        (flat / f"{n}.txt").write_text("0 0.5 0.5 0.25 0.5\n")
    (flat / "classes.txt").write_text("raccoon\n")
    _image(flat / "runs" / "a" / "training_curves.png")  # a run's plot, not a training image
    (flat / "notes").mkdir()
    for split in ("train", "val"):  # no splits: both are every image of the folder
        index, msgs = _read(read_split, flat, split)
        assert msgs == [] and [r.image_path.name for r in index.records] == ["a.jpg", "b.jpg"]
        assert index.class_names == ["raccoon"] and index.num_objects == 2


@pytest.mark.parametrize("kpt_shape", [[2, 2], [3, 3]])
def test_ultralytics_pose_labels_give_their_boxes(tmp_path: Path, kpt_shape: list[int]) -> None:
    """A pose dataset (``kpt_shape`` in data.yaml) trained as a detector: each line is the box,
    then the keypoints. With 2-value keypoints the line read as a polygon (a wrong box, no
    warning); with 3-value ones it was dropped as malformed (odd count)."""
    _image(tmp_path / "images" / "train" / "a.jpg")
    (tmp_path / "labels" / "train").mkdir(parents=True)
    keypoints = " ".join(["0.9"] * (kpt_shape[0] * kpt_shape[1]))
    (tmp_path / "labels" / "train" / "a.txt").write_text(f"0 0.5 0.5 0.25 0.5 {keypoints}\n")
    (tmp_path / "data.yaml").write_text(f"train: images/train\nkpt_shape: {kpt_shape}\nnames: ['person']\n")
    index, messages = _read(read_split, tmp_path, "train")
    assert messages == [] and index.records[0].boxes.tolist() == [[24.0, 12.0, 40.0, 36.0]]
    (tmp_path / "labels" / "train" / "a.txt").write_text(f"0 0.5 0.5 0.25 0.5 {keypoints} 0.1\n")
    _, messages = _read(read_split, tmp_path, "train")
    assert len(messages) == 1 and f"+ {kpt_shape[0] * kpt_shape[1]} keypoint values" in messages[0]


def test_fiftyone_voc_export_data_and_labels_folders(tmp_path: Path) -> None:
    """FiftyOne's VOCDetectionDataset export: ``data/<id>.jpg`` + ``labels/<id>.xml``. Read as
    YOLO before (``labels/``): 'no images for split train'."""
    for n in ("a", "b"):
        _image(tmp_path / "data" / f"{n}.jpg")
        _voc_xml(tmp_path / "labels", n, "raccoon")
    assert detect_format(tmp_path) == "voc"
    index, messages = _read(read_split, tmp_path, "train")
    assert [r.image_path for r in index.records] == [tmp_path / "data" / "a.jpg", tmp_path / "data" / "b.jpg"]
    assert [r.boxes.tolist() for r in index.records] == [[[1.0, 2.0, 20.0, 30.0]]] * 2 and messages == []
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")  # YOLO labels beside: not VOC's
    assert detect_format(tmp_path) == "yolo"


def test_fiftyone_coco_export_labels_json_beside_data(tmp_path: Path) -> None:
    """FiftyOne's COCODetectionDataset export: ``labels.json`` with ``file_name`` relative to
    ``data/`` beside it ('none of its images was found' before)."""
    _image(tmp_path / "data" / "x.jpg")
    coco = {
        "images": [{"id": 1, "file_name": "x.jpg", "width": W, "height": H}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 20], "iscrowd": 0}],
        "categories": [{"id": 1, "name": "raccoon"}],
    }
    (tmp_path / "labels.json").write_text(json.dumps(coco))
    index, messages = _read(read_dataset, tmp_path / "labels.json")
    assert messages == [] and index.root == tmp_path / "data"
    assert index.records[0].boxes.tolist() == [[2.0, 3.0, 12.0, 23.0]]


@pytest.mark.parametrize(("encoding", "name"), [("GBK", "浣熊"), ("shift_jis", "アライグマ"), ("Big5", "浣熊")])
def test_voc_xml_in_a_declared_multibyte_encoding(tmp_path: Path, encoding: str, name: str) -> None:
    """labelImg on a Chinese / Japanese system writes ``<?xml ... encoding="GBK"?>``: valid XML
    that expat cannot decode; it was skipped as 'malformed XML (multi-byte encodings are not supported)'."""
    _image(tmp_path / "JPEGImages" / "a.jpg")
    (tmp_path / "Annotations").mkdir()
    xml = (
        f'<?xml version="1.0" encoding="{encoding}"?>\n<annotation><filename>a.jpg</filename>'
        f"<object><name>{name}</name><bndbox><xmin>2</xmin><ymin>3</ymin><xmax>20</xmax><ymax>30</ymax>"
        "</bndbox></object></annotation>"
    )
    (tmp_path / "Annotations" / "a.xml").write_bytes(xml.encode(encoding))
    index, messages = _read(read_dataset, tmp_path)
    assert messages == [] and index.class_names == [name]
    assert index.records[0].boxes.tolist() == [[1.0, 2.0, 20.0, 30.0]]
