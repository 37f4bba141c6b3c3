"""A corpus of broken dataset files, generated here, for the COCO / VOC / YOLO readers and images.

Each case is a dataset of good images plus one broken input. Reading must not crash; the
warning (also in ``index.skipped``) names the file and the problem; the good records stay.
A file that is unusable as a whole raises ValueError naming it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from efficientdet.data.coco import read_coco
from efficientdet.data.dataset import DetectionDataset, collate_detections
from efficientdet.data.images import ImageError, image_size_of, load_image
from efficientdet.data.voc import read_voc
from efficientdet.data.yolo import read_yolo

W, H = 64, 48
NAN, INF = float("nan"), float("inf")

# --------------------------------------------------------------------------- COCO

CATS = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
GOOD_IMAGES = [{"id": i + 1, "file_name": f"imgs/{n}.jpg", "width": W, "height": H} for i, n in enumerate("abc")]
GOOD_ANNS = [  # a: 2 objects, b: 1, c: background
    {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 20]},
    {"id": 2, "image_id": 1, "category_id": 2, "bbox": [5, 6, 4, 4]},
    {"id": 3, "image_id": 2, "category_id": 1, "bbox": [10, 10, 5, 5]},
]


def _coco(root: Path, write_image: Any, **changes: Any) -> Path:
    for n in "abcd":  # d.jpg exists but is not listed: cases add it
        write_image(root / "imgs" / f"{n}.jpg")
    data = {"images": GOOD_IMAGES, "annotations": GOOD_ANNS, "categories": CATS, **changes}
    path = root / "ann.json"
    path.write_text(json.dumps({k: v for k, v in data.items() if v is not None}))  # NaN/Infinity written as such
    return path


def _ann(bbox: Any, **kw: Any) -> dict[str, Any]:
    return {"id": 9, "image_id": 2, "category_id": 1, "bbox": bbox, **kw}


_D = {"id": 4, "file_name": "imgs/d.jpg"}
COCO_RECORD_CASES = [  # id, extra images, extra annotations, extra categories, fragments, (records, objects)
    ("bbox-nan", [], [_ann([NAN, 1, 2, 3])], [], ("annotation id=9", "non-finite"), (3, 3)),
    ("bbox-inf", [], [_ann([1, 1, INF, 3])], [], ("annotation id=9", "non-finite"), (3, 3)),
    ("bbox-huge-int", [], [_ann([1, 1, 10**400, 3])], [], ("annotation id=9", "non-finite"), (3, 3)),
    ("bbox-huge", [], [_ann([1e30, 1e30, 1e30, 1e30])], [], ("annotation id=9", "lies outside the 64x48"), (3, 3)),
    ("bbox-negative-size", [], [_ann([10, 10, -5, 5])], [], ("annotation id=9", "inverted"), (3, 3)),
    ("bbox-negative-xy", [], [_ann([-20, -20, 30, 30])], [], ("annotation id=9", "clipped to [0, 0, 10, 10]"), (3, 4)),
    ("bbox-tiny", [], [_ann([10, 10, 1e-9, 5])], [], ("annotation id=9", "zero area in float32"), (3, 3)),
    ("bbox-3-numbers", [], [_ann([1, 2, 3])], [], ("annotation id=9", "malformed bbox [1, 2, 3]"), (3, 3)),
    ("bbox-strings", [], [_ann(["1", "2", "3", "4"])], [], ("annotation id=9", "malformed bbox"), (3, 3)),
    ("bbox-missing", [], [{"id": 9, "image_id": 2, "category_id": 1}], [], ("annotation id=9", "malformed bbox None"), (3, 3)),
    ("unknown-category", [], [_ann([1, 1, 2, 2], category_id=42)], [], ("annotation id=9", "unknown category_id 42"), (3, 3)),
    ("unknown-image", [], [_ann([1, 1, 2, 2], image_id=77)], [], ("annotation id=9", "unknown image_id 77"), (3, 3)),
    ("annotation-not-object", [], [5], [], ("annotation #3", "not an object (int)"), (3, 3)),
    ("duplicate-image-id", [{"id": 1, "file_name": "imgs/d.jpg"}], [], [], ("image id=1", "duplicate image id"), (3, 3)),
    ("duplicate-annotation-copy", [], [dict(GOOD_ANNS[0])], [], ("annotation id=1", "same id, image, category and bbox"), (3, 3)),
    ("duplicate-annotation-id", [], [_ann([20, 20, 5, 5], id=1)], [], ("annotation id=1", "duplicate annotation id"), (3, 4)),
    ("duplicate-category-id", [], [], [{"id": 1, "name": "other"}], ("category id=1", "duplicate category id"), (3, 3)),
    ("duplicate-file-name", [{"id": 4, "file_name": "imgs/./a.jpg"}], [], [], ("image id=4", "same file 'a.jpg' as image id=1"), (4, 3)),
    ("category-without-id", [], [], [{"name": "x"}], ("category #2", "non-integer 'id'"), (3, 3)),
    ("category-name-not-text", [], [], [{"id": 3, "name": {"x": 1}}], ("category id=3", "is not text"), (3, 3)),
    ("image-without-id", [{"file_name": "imgs/d.jpg"}], [], [], ("image #3", "non-integer 'id'"), (3, 3)),
    ("image-without-file-name", [{"id": 4}], [], [], ("image id=4", "invalid file_name None"), (3, 3)),
    ("image-file-missing", [{"id": 4, "file_name": "imgs/gone.jpg"}], [], [], ("image id=4", "gone.jpg not found"), (3, 3)),
    ("image-name-nul-byte", [{"id": 4, "file_name": "imgs/d\x00.jpg"}], [], [], ("image id=4", "not found"), (3, 3)),
    ("width-text", [{**_D, "width": "64", "height": 48}], [], [], ("image id=4", "invalid width/height '64'x48"), (4, 3)),
    ("width-huge", [{**_D, "width": 10**400, "height": 48}], [], [], ("image id=4", "invalid width/height"), (4, 3)),
    ("width-zero", [{**_D, "width": 0, "height": 48}], [], [], ("image id=4", "invalid width/height 0x48"), (4, 3)),
]


@pytest.mark.parametrize("case", COCO_RECORD_CASES, ids=[c[0] for c in COCO_RECORD_CASES])
def test_coco_broken_record_is_reported_and_rest_kept(
    tmp_path: Path, write_image: Any, read_logged: Any, one_line: Any, check_index: Any, case: tuple[Any, ...]
) -> None:
    _, images, anns, cats, fragments, (n_records, n_objects) = case
    path = _coco(tmp_path, write_image, images=GOOD_IMAGES + images, annotations=GOOD_ANNS + anns, categories=CATS + cats)
    index, messages = read_logged(read_coco, path)
    line = one_line(messages, str(path), *fragments)
    assert line in index.skipped
    assert len(index) == n_records and index.num_objects == n_objects
    assert [r.num_objects for r in index.records[:3]] == [2, 1 + (n_objects == 4), 0]  # the good ones
    check_index(index)


def test_coco_with_only_crowd_annotations_warns(tmp_path: Path, write_image: Any, read_logged: Any, one_line: Any) -> None:
    """Every object iscrowd=1 (as some mask exporters write): nothing to train on, said once."""
    crowd = [dict(a, iscrowd=1) for a in GOOD_ANNS]
    path = _coco(tmp_path, write_image, annotations=crowd)
    index, messages = read_logged(read_coco, path)
    one_line(messages, str(path), "annotations", f"no objects but {len(crowd)} iscrowd=1 annotations", "every image read as background")
    assert index.num_objects == 0 and len(index) == 3
    mixed, messages = read_logged(read_coco, _coco(tmp_path / "m", write_image, annotations=[*GOOD_ANNS, crowd[0]]))
    assert messages == [] and mixed.counts["crowd"] == 1  # a few crowd regions: normal, no warning


def test_coco_without_annotations_field_warns(tmp_path: Path, write_image: Any, read_logged: Any, one_line: Any) -> None:
    path = _coco(tmp_path, write_image, annotations=None)
    index, messages = read_logged(read_coco, path)
    one_line(messages, str(path), "no 'annotations' list", "background")
    assert len(index) == 3 and index.num_objects == 0


COCO_FILE_CASES = [  # id, file text, message fragment
    ("truncated", json.dumps({"images": GOOD_IMAGES, "annotations": GOOD_ANNS})[:150], "malformed JSON at line 1"),
    ("empty", "", "malformed JSON"),
    ("list", json.dumps([GOOD_IMAGES]), "not a COCO annotation file (a JSON list"),
    ("no-images", json.dumps({"annotations": GOOD_ANNS, "categories": CATS}), "no top-level 'images' list"),
    ("images-dict", json.dumps({"images": {"id": 1}, "categories": CATS}), "no top-level 'images' list"),
    ("annotations-dict", json.dumps({"images": GOOD_IMAGES, "annotations": {}, "categories": CATS}), "'annotations' must be a list"),
    ("no-categories", json.dumps({"images": GOOD_IMAGES, "annotations": GOOD_ANNS}), "no 'categories' list"),
    ("categories-text", json.dumps({"images": GOOD_IMAGES, "categories": "cat"}), "'categories' must be a list, got str"),
    ("nested-deeply", "[" * 100_000, "nested too deeply"),
    ("not-utf8", None, "not a UTF-8 text file"),
]


@pytest.mark.parametrize("case", COCO_FILE_CASES, ids=[c[0] for c in COCO_FILE_CASES])
def test_coco_unusable_file_raises_naming_it(tmp_path: Path, case: tuple[str, str | None, str]) -> None:
    _, text, fragment = case
    path = tmp_path / "ann.json"
    path.write_bytes(b"\xff\xfe\x00{" if text is None else text.encode())
    with pytest.raises(ValueError) as info:
        read_coco(path)
    assert str(path) in str(info.value) and fragment in str(info.value)


@pytest.mark.parametrize("name", ["../../outside.jpg", "imgs/../../../outside.jpg", "ABSOLUTE"])
def test_coco_paths_outside_root(tmp_path: Path, write_image: Any, read_logged: Any, one_line: Any, name: str) -> None:
    outside = write_image(tmp_path / "outside.jpg")
    root = tmp_path / "a" / "b"
    name = str(outside) if name == "ABSOLUTE" else name
    path = _coco(root, write_image, images=[*GOOD_IMAGES, {"id": 4, "file_name": name}])
    index, messages = read_logged(read_coco, path)
    one_line(messages, str(path), "image id=4", "escapes the image root", "allow_outside_root=True")
    assert len(index) == 3
    allowed, messages = read_logged(read_coco, path, allow_outside_root=True)
    assert messages == [] and allowed.records[3].image_path.resolve() == outside.resolve()


def test_unicode_and_spaces_in_paths_work(tmp_path: Path, write_image: Any, read_logged: Any) -> None:
    name = "fotos del año/ímage 1 ✓.png"
    write_image(tmp_path / "données ü" / "imgs" / "a.jpg")
    image = write_image(tmp_path / "données ü" / name)
    path = _coco(tmp_path / "données ü", write_image, images=[GOOD_IMAGES[0], {"id": 7, "file_name": name}], annotations=GOOD_ANNS[:2])
    index, messages = read_logged(read_coco, path)
    assert messages == [] and [r.image_path for r in index.records][1] == image.absolute()
    yolo = tmp_path / "yolo ü"
    write_image(yolo / "images" / "ça va 1.jpg")
    (yolo / "labels").mkdir()
    (yolo / "labels" / "ça va 1.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    index, messages = read_logged(read_yolo, yolo, split=None)
    assert messages == [] and index.records[0].boxes.tolist() == [[16, 12, 48, 36]]


# --------------------------------------------------------------------------- VOC


def _xml(filename: str, objects: str = "", size: str | None = f"<width>{W}</width><height>{H}</height>") -> str:
    size_xml = f"<size>{size}<depth>3</depth></size>" if size is not None else ""
    return f"<annotation><folder>VOC</folder><filename>{filename}</filename>{size_xml}{objects}</annotation>"


def _obj(name: str = "dog", box: tuple[Any, ...] = (1, 1, 10, 20), bndbox: bool = True) -> str:
    coords = "".join(f"<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box))
    return f"<object><name>{name}</name>" + (f"<bndbox>{coords}</bndbox>" if bndbox else "") + "</object>"


def _voc(tmp_path: Path, write_image: Any, d_xml: str | bytes | None = None) -> Path:
    ann = tmp_path / "VOC" / "Annotations"
    ann.mkdir(parents=True)
    for stem, objs in (("a", _obj() + _obj("cat", (5, 6, 64, 48))), ("b", _obj("cat")), ("c", "")):
        (ann / f"{stem}.xml").write_text(_xml(f"{stem}.jpg", objs))
    for stem in "abcd":
        write_image(tmp_path / "VOC" / "JPEGImages" / f"{stem}.jpg")
    if d_xml is not None:
        (ann / "d.xml").write_bytes(d_xml if isinstance(d_xml, bytes) else d_xml.encode())
    return ann


LAUGHS = '<?xml version="1.0"?><!DOCTYPE annotation [<!ENTITY lol "lol">' + "".join(
    f'<!ENTITY lol{i} "{("&lol%s;" % (i - 1 or "")) * 10}">' for i in range(1, 10)
) + "]><annotation><filename>&lol9;</filename></annotation>"
XXE = '<!DOCTYPE annotation [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>' + _xml("&xxe;")
XXE_PARAM = '<!DOCTYPE annotation [<!ENTITY % p SYSTEM "http://example.invalid/x.dtd"> %p;]>' + _xml("d.jpg")
VOC_FILE_CASES = [  # id, d.xml content, fragments: d.xml is skipped
    ("truncated", _xml("d.jpg", _obj())[:60], ("malformed XML at line 1",)),
    ("empty", "", ("malformed XML at line 1 column 0",)),
    ("binary", b"\x00\xff\xfe garbage", ("malformed XML",)),
    ("bogus-encoding", '<?xml version="1.0" encoding="bogus"?>' + _xml("d.jpg"), ("malformed XML (LookupError",)),
    ("billion-laughs", LAUGHS, ("forbidden XML construct (entity declaration 'lol')", "refused for safety")),
    ("xxe", XXE, ("forbidden XML construct (entity declaration 'xxe' with external source 'file:///etc/passwd')",)),
    ("xxe-parameter-entity", XXE_PARAM, ("forbidden XML construct (entity declaration 'p'",)),
    ("wrong-root", "<notvoc><filename>d.jpg</filename></notvoc>", ("root element is <notvoc>",)),
    ("image-missing", _xml("gone.jpg", _obj()), ("image 'gone.jpg'", "image file not found")),
    ("path-escapes", _xml("../../d.jpg", _obj()), ("escapes the dataset root", "allow_outside_root=True")),
    ("path-absolute", _xml("/etc/passwd", _obj()), ("escapes the dataset root",)),
    ("duplicate-image", _xml("a.jpg", _obj()), ("image 'a.jpg'", "already annotated by a.xml")),
]


@pytest.mark.parametrize("case", VOC_FILE_CASES, ids=[c[0] for c in VOC_FILE_CASES])
def test_voc_broken_file_skips_that_image(
    tmp_path: Path, write_image: Any, read_logged: Any, one_line: Any, check_index: Any, case: tuple[Any, ...]
) -> None:
    _, xml, fragments = case
    ann = _voc(tmp_path, write_image, xml)
    index, messages = read_logged(read_voc, ann)
    assert one_line(messages, str(ann / "d.xml"), *fragments) in index.skipped
    assert [(r.image_path.stem, r.num_objects) for r in index.records] == [("a", 2), ("b", 1), ("c", 0)]
    check_index(index)


VOC_OBJECT_CASES = [  # id, d.xml, fragments (None: no warning), d's objects and size
    ("no-bndbox", _xml("d.jpg", _obj() + _obj(bndbox=False)), ("object #2 ('dog')", "missing or non-numeric <bndbox>"), 1),
    ("non-numeric", _xml("d.jpg", _obj() + _obj(box=("x", 1, 5, 5))), ("object #2", "non-numeric <bndbox>"), 1),
    ("nan", _xml("d.jpg", _obj() + _obj(box=("nan", 1, 5, 5))), ("object #2", "non-finite"), 1),
    ("inf", _xml("d.jpg", _obj() + _obj(box=(1, 1, "inf", 5))), ("object #2", "non-finite"), 1),
    ("huge", _xml("d.jpg", _obj() + _obj(box=(1, 1, "1e400", 5))), ("object #2", "non-finite"), 1),
    ("far-outside", _xml("d.jpg", _obj() + _obj(box=(1e30, 1, 2e30, 5))), ("object #2", "lies outside"), 1),
    ("negative", _xml("d.jpg", _obj() + _obj(box=(-30, 1, 10, 5))), ("object #2", "clipped to [0, 0, 10, 5]"), 2),
    ("inverted", _xml("d.jpg", _obj() + _obj(box=(9, 1, 3, 5))), ("object #2", "inverted"), 1),
    ("no-name", _xml("d.jpg", _obj() + _obj(name="")), ("object #2", "missing <name>"), 1),
    ("no-size", _xml("d.jpg", _obj(), size=None), None, 1),  # size read from the image header
    ("size-nan", _xml("d.jpg", _obj(), size="<width>nan</width><height>-3</height>"), None, 1),
]


@pytest.mark.parametrize("case", VOC_OBJECT_CASES, ids=[c[0] for c in VOC_OBJECT_CASES])
def test_voc_broken_object_is_reported_and_rest_kept(
    tmp_path: Path, write_image: Any, read_logged: Any, one_line: Any, check_index: Any, case: tuple[Any, ...]
) -> None:
    _, xml, fragments, d_objects = case
    ann = _voc(tmp_path, write_image, xml)
    index, messages = read_logged(read_voc, ann)
    if fragments is None:
        assert messages == []
    else:
        one_line(messages, str(ann / "d.xml"), *fragments)
    assert [(r.image_path.stem, r.num_objects) for r in index.records] == [("a", 2), ("b", 1), ("c", 0), ("d", d_objects)]
    assert (index.records[3].width, index.records[3].height) == (W, H)
    check_index(index)


def test_voc_no_size_and_broken_image(tmp_path: Path, write_image: Any, read_logged: Any, one_line: Any) -> None:
    ann = _voc(tmp_path, write_image, _xml("d.jpg", _obj(), size=None))
    (tmp_path / "VOC" / "JPEGImages" / "d.jpg").write_text("not an image")
    index, messages = read_logged(read_voc, ann)
    one_line(messages, str(ann / "d.xml"), "no usable <size> and unreadable image header (not an image file")
    assert len(index) == 3


def test_voc_external_dtd_is_not_fetched(tmp_path: Path, write_image: Any, read_logged: Any) -> None:
    # A DTD that would define an entity; expat (via defusedxml) never reads it, so &e; stays undefined.
    ann = _voc(tmp_path, write_image, '<!DOCTYPE annotation SYSTEM "evil.dtd">' + _xml("d.jpg", _obj()))
    (ann / "evil.dtd").write_text('<!ENTITY e SYSTEM "file:///etc/passwd">')
    index, messages = read_logged(read_voc, ann)
    assert messages == [] and len(index) == 4 and index.records[3].num_objects == 1


# --------------------------------------------------------------------------- YOLO


def _yolo(tmp_path: Path, write_image: Any, c_label: str | bytes | None) -> Path:
    root = tmp_path / "yolo"
    for stem, text in (("a", "1 0.5 0.5 0.25 0.5\n"), ("b", "0 0.1 0.1 0.1 0.1\n"), ("c", c_label)):
        write_image(root / "images" / "train" / f"{stem}.jpg")
        if text is not None:
            (root / "labels" / "train").mkdir(parents=True, exist_ok=True)
            label = root / "labels" / "train" / f"{stem}.txt"
            label.write_bytes(text if isinstance(text, bytes) else text.encode())
    (root / "data.yaml").write_text('train: images/train\nnames: ["cat", "dog"]\n')
    return root


YOLO_LINE_CASES = [  # id, bad line, fragment (line 2 of c.txt), objects kept in c
    ("3-values", "0 0.5 0.5 0.2", "got 4 values", 1),
    ("5-values", "0 0.5 0.5 0.2 0.2 0.1", "got 6 values", 1),
    ("non-numeric", "cat 0.5 0.5 0.2 0.2", "non-numeric value in 'cat 0.5 0.5 0.2 0.2'", 1),
    ("class-out-of-range", "7 0.5 0.5 0.2 0.2", "class id 7 not in the 2 class names", 1),
    ("class-negative", "-1 0.5 0.5 0.2 0.2", "invalid class id '-1'", 1),
    ("class-fraction", "0.5 0.5 0.5 0.2 0.2", "invalid class id '0.5'", 1),
    ("class-huge", "1e300 0.5 0.5 0.2 0.2", "invalid class id '1e300'", 1),
    ("coords-over-1", "0 1.5 0.5 0.2 0.2", "lies outside the 64x48 image", 1),
    ("size-over-1", "0 0.5 0.5 1.5 0.2", "clipped to [0, 19.2, 64, 28.8]", 2),
    ("coords-negative", "0 -0.5 0.5 0.2 0.2", "lies outside", 1),
    ("size-negative", "0 0.5 0.5 -0.2 0.2", "inverted", 1),
    ("nan", "0 nan 0.5 0.2 0.2", "non-finite", 1),
    ("inf", "0 0.5 inf 0.2 0.2", "non-finite", 1),
    ("huge", "0 0.5 0.5 1e400 0.2", "non-finite", 1),
    ("polygon-nan", "0 0.1 0.1 nan 0.2 0.3 0.3", "non-finite", 1),
]


@pytest.mark.parametrize("case", YOLO_LINE_CASES, ids=[c[0] for c in YOLO_LINE_CASES])
def test_yolo_broken_line_is_reported_and_rest_kept(
    tmp_path: Path, write_image: Any, read_logged: Any, one_line: Any, check_index: Any, case: tuple[Any, ...]
) -> None:
    _, line, fragment, c_objects = case
    root = _yolo(tmp_path, write_image, f"0 0.5 0.5 0.5 0.5\n{line}\n")
    index, messages = read_logged(read_yolo, root)
    assert one_line(messages, str(root / "labels" / "train" / "c.txt"), "line 2", fragment) in index.skipped
    assert [r.num_objects for r in index.records] == [1, 1, c_objects] and index.class_names == ["cat", "dog"]
    check_index(index)


@pytest.mark.parametrize(
    "case, fragments, records",
    [
        ("empty-label", None, ["a", "b", "c"]),  # a background image: no warning
        ("image-without-label", None, ["a", "b", "c"]),
        ("label-without-image", ("orphan.txt", "label file", "no image with this name"), ["a", "b", "c"]),
        ("label-not-utf8", ("c.txt", "image c.jpg", "unreadable label file"), ["a", "b"]),
        ("label-is-folder", ("c.txt", "unreadable label file"), ["a", "b"]),
        ("image-is-text", ("c.jpg", "not an image file"), ["a", "b"]),
        ("image-zero-bytes", ("c.jpg", "file is empty (0 bytes)"), ["a", "b"]),
        ("yaml-entry-not-path", ("data.yaml train: 5", "is not a path"), ["a", "b", "c"]),
    ],
)
def test_yolo_broken_file(
    tmp_path: Path, write_image: Any, read_logged: Any, one_line: Any, case: str, fragments: Any, records: list[str]
) -> None:
    root = _yolo(tmp_path, write_image, {"empty-label": "", "label-not-utf8": b"\xff\xfe0 1"}.get(case))
    labels = root / "labels" / "train"
    if case == "label-without-image":
        (labels / "orphan.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    elif case == "label-is-folder":
        (labels / "c.txt").mkdir()
    elif case == "image-is-text":
        (root / "images" / "train" / "c.jpg").write_text("hello")
    elif case == "image-zero-bytes":
        (root / "images" / "train" / "c.jpg").write_bytes(b"")
    elif case == "yaml-entry-not-path":
        (root / "data.yaml").write_text("train: [5, images/train]\nnames: [cat, dog]\n")
    index, messages = read_logged(read_yolo, root)
    if fragments is None:
        assert messages == []
    else:
        one_line(messages, *fragments)
    assert [r.image_path.stem for r in index.records] == records and index.num_objects == 2
    if case == "image-without-label":
        assert index.counts["no_label_file"] == 1 and index.records[2].num_objects == 0


def test_yolo_unusable_yaml_raises_naming_it(tmp_path: Path, write_image: Any) -> None:
    root = _yolo(tmp_path, write_image, "")
    cases = [
        # one line (PyYAML's own text is 6, naming "<unicode string>")
        ("names: [a, b\n  oops: ]", r"data\.yaml: unreadable YAML \(while parsing a flow sequence at line 1 column 8: [^\n]* at line 2 column \d+\)$"),
        ("[" * 5000, r"data\.yaml: unreadable YAML \(RecursionError: maximum recursion depth exceeded"),
        ("- just\n- a list\n", r"data\.yaml: expected a mapping at the top level, got list$"),
    ]
    for text, message in cases:
        (root / "data.yaml").write_text(text)
        with pytest.raises(ValueError, match=message):
            read_yolo(root)


@pytest.mark.parametrize("entry", ["../outside.jpg", "images/../../outside.jpg", "ABSOLUTE"])
def test_yolo_list_paths_outside_root(tmp_path: Path, write_image: Any, read_logged: Any, one_line: Any, entry: str) -> None:
    root = _yolo(tmp_path, write_image, None)
    outside = write_image(tmp_path / "outside.jpg")
    entry = str(outside) if entry == "ABSOLUTE" else entry
    (root / "list.txt").write_text(f"images/train/a.jpg\n{entry}\n")
    index, messages = read_logged(read_yolo, root, split="list.txt")
    one_line(messages, str(root / "list.txt"), "line 2", "escapes the dataset root", "allow_outside_root=True")
    assert [r.image_path.stem for r in index.records] == ["a"]
    allowed, _ = read_logged(read_yolo, root, split="list.txt", allow_outside_root=True)
    assert allowed.records[1].image_path.resolve() == outside.resolve()


# --------------------------------------------------------------------------- images in training


def test_bad_images_are_skipped_and_counted_by_the_loader(
    tmp_path: Path, write_image: Any, png_bytes: Any, read_logged: Any
) -> None:
    """Reading only checks that files exist; undecodable ones are skipped per sample, mid-epoch."""
    imgs = tmp_path / "imgs"
    full = write_image(imgs / "full.jpg").read_bytes()
    bad = {
        "truncated.jpg": full[: len(full) // 2],
        "text.jpg": b"just some text\n",
        "zero.jpg": b"",
        "bomb.png": png_bytes(30000, 30000),  # 900 MP declared in a ~100-byte file
        "zero-width.png": png_bytes(0, 10),
    }
    for name, data in bad.items():
        (imgs / name).write_bytes(data)
    write_image(imgs / "png-named.jpg", fmt="PNG")  # wrong extension: read by content, works
    good = ["a.jpg", "png-named.jpg", "b.png", "c.jpg"]
    for name in ("a.jpg", "b.png", "c.jpg"):
        write_image(imgs / name)
    names = [good[0], *list(bad)[:3], good[1], good[2], *list(bad)[3:], good[3]]
    images = [{"id": i + 1, "file_name": f"imgs/{n}", "width": W, "height": H} for i, n in enumerate(names)]
    anns = [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [2, 2, 20, 20]} for i in range(len(names))]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": CATS}))
    index, messages = read_logged(read_coco, path)
    assert messages == [] and len(index) == 9
    ds = DetectionDataset(index)
    loader = DataLoader(ds, batch_size=2, shuffle=False, num_workers=0, collate_fn=collate_detections)
    with pytest.warns(Warning) as caught:
        batches = list(loader)  # one full epoch: no exception
    texts = [str(w.message) for w in caught]
    assert [p.rsplit("/", 1)[-1] for b in batches for p in b["paths"]] == good
    assert all(b["images"].shape[1:] == (3, H, W) for b in batches if b["images"].shape[0])
    assert ds.num_bad == 5 and sorted(Path(p).name for p in ds.bad_paths) == sorted(bad)
    for name, fragment in [
        ("truncated.jpg", "truncated"), ("text.jpg", "not an image file"), ("zero.jpg", "empty (0 bytes)"),
        ("bomb.png", "900,000,000 pixels"), ("zero-width.png", "zero-size image"),
    ]:
        assert any(str(imgs / name) in t and fragment in t and "sample skipped" in t for t in texts), (name, texts)


def test_bomb_limit_refuses_and_can_be_raised(tmp_path: Path, write_image: Any, png_bytes: Any) -> None:
    path = write_image(tmp_path / "x.png", size=(100, 100))
    with pytest.raises(ImageError, match=r"x\.png: image has 10,000 pixels .* more than max_pixels=9,999"):
        load_image(path, max_pixels=9_999)
    assert load_image(path, max_pixels=10_000).shape == (3, 100, 100)
    ds = DetectionDataset(read_coco(_coco(tmp_path / "ds", write_image)), max_pixels=W * H - 1)
    with pytest.warns(Warning, match="more than max_pixels=3,071"):
        assert ds[0] is None
    assert DetectionDataset(ds.index, max_pixels=W * H)[0] is not None
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bytes(20000, 20000))
    with pytest.raises(ImageError, match=r"400,000,000 pixels .* more than max_pixels=100,000,000"):
        load_image(bomb)
    assert image_size_of(bomb) == (20000, 20000)  # readers index it; the limit applies at decode


def test_raised_limit_goes_past_pillows_own(
    tmp_path: Path, write_image: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """max_pixels is the one knob: Pillow's process-wide bomb limit does not overrule it."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses > 2000 pixels
    path = write_image(tmp_path / "x.png", size=(W, H))
    with pytest.raises(Image.DecompressionBombError):
        Image.open(path)
    assert load_image(path).shape == (3, H, W) and load_image(path, max_pixels=None).shape == (3, H, W)
    with pytest.raises(ImageError, match=r"3,072 pixels .* more than max_pixels=3,000"):
        load_image(path, max_pixels=3_000)
    assert torch.equal(load_image(path), torch.tensor([30, 120, 200], dtype=torch.uint8).view(3, 1, 1).expand(3, H, W))


def test_corrupt_png_data_does_not_crash_the_process(tmp_path: Path, png_bytes: Any) -> None:
    """torchvision 0.29's decode_png segfaults on libpng data errors (bad IDAT CRC, bad row
    filter), killing a DataLoader worker or the whole run: PNG goes through Pillow, which
    either decodes such a file or raises. Checked in a child process, so a crash is a failure."""
    for name, data in {"crc.png": png_bytes(16, 16, bytes(272), bad_crc=True),
                       "filter.png": png_bytes(16, 16, bytes([9] * 272)),  # 9: no such row filter
                       "short.png": png_bytes(16, 16, bytes(40))}.items():  # too little pixel data
        (tmp_path / name).write_bytes(data)
    script = textwrap.dedent(f"""
        from efficientdet.data.images import ImageError, load_image
        for name in ("crc.png", "filter.png", "short.png"):
            try:
                print("decoded", tuple(load_image({str(tmp_path)!r} + "/" + name).shape))
            except ImageError as exc:
                print("ImageError", exc)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[:2] == ["decoded (3, 16, 16)"] * 2, lines
    assert len(lines) == 3 and lines[2].startswith("ImageError") and "short.png: corrupt" in lines[2], lines
