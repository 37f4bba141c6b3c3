"""Property-based fuzzing of the dataset readers and image decoding (hypothesis).

Whatever the input, the only allowed outcomes are a DatasetIndex whose records keep every
invariant (see ``check_index``), with its problems as warnings, or the documented error
(ValueError / ImageError) with a message that names the file. A KeyError, TypeError,
RecursionError, OverflowError, hang or crash is a bug in the reader.

Bounded time: ``EFFDET_FUZZ_EXAMPLES`` (default 50) examples per test; raise it locally
for a longer hunt, e.g. ``EFFDET_FUZZ_EXAMPLES=2000``.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from efficientdet.data.coco import read_coco
from efficientdet.data.images import ImageError, image_size_of, is_dense, load_image
from efficientdet.data.voc import read_voc
from efficientdet.data.yolo import read_yolo

FUZZ = settings(
    max_examples=int(os.environ.get("EFFDET_FUZZ_EXAMPLES", "50")),
    deadline=None,
    database=None,  # no .hypothesis/ folder in the checkout
    # The fixtures used inside @given are stateless helpers (or module-scoped folders).
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

NUMBERS = st.one_of(
    st.integers(-5, 70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, -1, 1e-9, 0.5, 63.9999999, 1e30, -1e30, 10**400, -(10**400), 2**24 + 1]),
)
JUNK = st.recursive(
    st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=6)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=8,
)
NAMES = st.sampled_from(["a.jpg", "b.png", "gone.jpg", "../a.jpg", "../../b.png", "/etc/passwd", "", "a.jpg\x00", "."])


def _either(good: Any) -> Any:
    return st.one_of(good, good, JUNK)  # mostly plausible values, some junk


def _entry(**fields: Any) -> Any:
    return st.one_of(st.fixed_dictionaries({}, optional={k: _either(v) for k, v in fields.items()}), JUNK)


COCO_DOC = st.one_of(
    JUNK,
    st.fixed_dictionaries(
        {},
        optional={
            "images": _either(st.lists(_entry(id=st.integers(0, 4), file_name=NAMES, width=NUMBERS, height=NUMBERS), max_size=5)),
            "annotations": _either(st.lists(_entry(
                id=st.integers(0, 3), image_id=st.integers(0, 4), category_id=st.integers(0, 3),
                bbox=st.lists(NUMBERS, min_size=3, max_size=5), iscrowd=st.sampled_from([0, 1]),
            ), max_size=6)),
            "categories": _either(st.lists(_entry(id=st.integers(0, 3), name=st.text(max_size=4)), max_size=4)),
        },
    ),
)


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with two good images, a.jpg and b.png (64x48); examples write next to them."""
    root = tmp_path_factory.mktemp("fuzz")
    Image.new("RGB", (64, 48), (10, 20, 30)).save(root / "a.jpg")
    Image.new("RGB", (64, 48), (10, 20, 30)).save(root / "b.png")
    return root


def _read_or_documented_error(fn: Any, path: Path, check_index: Any, *args: Any, **kw: Any) -> Any:
    """The index (checked), or None after a ValueError that names ``path``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            index = fn(path, *args, **kw)
        except ValueError as exc:  # the documented error for a wholly unusable file
            assert str(path) in str(exc), exc
            return None
    check_index(index)
    for w in caught:
        text = str(w.message)
        assert text in index.skipped or "more data issues" in text or "(WxH)" in text, text
    assert all(line.split(": ", 1)[0] for line in index.skipped)  # every line starts with a file
    return index


@FUZZ
@given(doc=COCO_DOC)
def test_coco_reader_on_random_json(doc: Any, fuzz_root: Path, check_index: Any) -> None:
    path = fuzz_root / "ann.json"
    path.write_text(json.dumps(doc))
    index = _read_or_documented_error(read_coco, path, check_index)
    if index is not None:
        assert index.root == fuzz_root.absolute() and len(index) <= len(doc["images"])
        assert all(r.image_path.name in ("a.jpg", "b.png") for r in index.records)


GOOD_COCO = json.dumps({
    "images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}, {"id": 2, "file_name": "b.png"}],
    "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 30, 20]},
                    {"id": 2, "image_id": 2, "category_id": 1, "bbox": [5, 5, 10, 10]}],
    "categories": [{"id": 1, "name": "thing"}],
})


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, len(GOOD_COCO)), st.sampled_from(list('{}[],:"0123456789.-eNaI x'))), max_size=4),
       cut=st.one_of(st.none(), st.integers(0, len(GOOD_COCO))))
def test_coco_reader_on_corrupted_text(edits: list[tuple[int, str]], cut: int | None, fuzz_root: Path, check_index: Any) -> None:
    text = list(GOOD_COCO)
    for pos, char in edits:
        text.insert(pos, char)
    path = fuzz_root / "ann.json"
    path.write_text("".join(text)[:cut])
    _read_or_documented_error(read_coco, path, check_index)


# --------------------------------------------------------------------------- VOC

TAGS = st.sampled_from(["annotation", "filename", "folder", "size", "width", "height", "object", "name",
                        "bndbox", "xmin", "ymin", "xmax", "ymax", "difficult", "x"])
TEXTS = st.one_of(NAMES, NUMBERS.map(str), st.sampled_from(["dog", "cat", "nan", "-inf", "1e400", " 5 ", "&amp;"]),
                  st.text(max_size=5))
ELEMENT = st.recursive(
    st.tuples(TAGS, TEXTS, st.just([])),
    lambda kids: st.tuples(TAGS, TEXTS, st.lists(kids, max_size=4)),
    max_leaves=16,
)
PREFIXES = st.sampled_from([
    "", '<?xml version="1.0"?>', '<?xml version="1.0" encoding="bogus"?>',
    '<!DOCTYPE annotation [<!ENTITY e "boom">]>', '<!DOCTYPE annotation [<!ENTITY e SYSTEM "file:///etc/passwd">]>',
    '<!DOCTYPE annotation SYSTEM "http://example.invalid/a.dtd">',
])


def _to_xml(element: tuple[str, str, list[Any]]) -> str:
    tag, text, kids = element
    return f"<{tag}>{escape(text)}{''.join(_to_xml(k) for k in kids)}</{tag}>"


@pytest.fixture(scope="module")
def voc_root(fuzz_root: Path) -> Path:
    """Annotations/ with good a.xml and b.xml next to fuzz_root's images; examples write z.xml."""
    ann = fuzz_root / "voc" / "Annotations"
    ann.mkdir(parents=True)
    for stem, ext in (("a", "jpg"), ("b", "png")):
        (fuzz_root / "voc" / f"{stem}.{ext}").write_bytes((fuzz_root / f"{stem}.{ext}").read_bytes())
        (ann / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.{ext}</filename><object><name>dog</name><bndbox><xmin>2</xmin>"
            "<ymin>2</ymin><xmax>20</xmax><ymax>30</ymax></bndbox></object></annotation>"
        )
    return ann


@FUZZ
@given(prefix=PREFIXES, kids=st.lists(ELEMENT, max_size=5), root_tag=st.sampled_from(["annotation", "annotation", "x"]),
       cut=st.one_of(st.none(), st.integers(0, 400)), insert=st.text(max_size=3))
def test_voc_reader_on_random_xml(
    prefix: str, kids: list[Any], root_tag: str, cut: int | None, insert: str, voc_root: Path, check_index: Any
) -> None:
    xml = prefix + _to_xml((root_tag, "", kids))
    if cut is not None:  # truncate, or splice in a few random characters
        xml = xml[:cut] + (insert if cut % 2 else "")
        xml += "" if cut % 3 else xml[cut:]
    (voc_root / "z.xml").write_bytes(xml.encode("utf-8", "surrogatepass"))
    index = _read_or_documented_error(read_voc, voc_root, check_index)
    assert index is not None  # a broken annotation file never makes the whole read fail
    stems = [r.image_path.stem for r in index.records]
    assert stems[:2] == ["a", "b"] and len(stems) <= 3  # the good files are always read
    assert index.records[0].num_objects == 1 and index.records[1].num_objects == 1


# --------------------------------------------------------------------------- YOLO

TOKENS = st.one_of(
    st.sampled_from(["0", "1", "2", "7", "-1", "1.0", "0.5", "1e300", "99999", "100000", "nan", "inf", "-inf",
                     "1.5", "-0.2", "1e-9", "0x10", "abc", "#", "", "1e400"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=4),
)
LINES = st.lists(st.tuples(st.lists(TOKENS, max_size=9), st.sampled_from([" ", "\t", "  "])), max_size=6)


@pytest.fixture(scope="module")
def yolo_root(fuzz_root: Path) -> Path:
    """images/ + labels/ with good a and b; examples write labels/z.txt for images/z.jpg."""
    root = fuzz_root / "yolo"
    (root / "labels").mkdir(parents=True)
    (root / "images").mkdir()
    for stem in "az":
        (root / "images" / f"{stem}.jpg").write_bytes((fuzz_root / "a.jpg").read_bytes())
    (root / "images" / "b.png").write_bytes((fuzz_root / "b.png").read_bytes())
    (root / "labels" / "a.txt").write_text("1 0.5 0.5 0.25 0.5\n")
    (root / "labels" / "b.txt").write_text("0 0.5 0.5 1 1\n")
    return root


@FUZZ
@given(lines=LINES, names=st.sampled_from([None, ["cat", "dog"]]), raw=st.one_of(st.none(), st.binary(max_size=40)))
def test_yolo_reader_on_random_lines(
    lines: list[tuple[list[str], str]], names: list[str] | None, raw: bytes | None, yolo_root: Path, check_index: Any
) -> None:
    text = "\n".join(sep.join(tokens) for tokens, sep in lines)
    (yolo_root / "labels" / "z.txt").write_bytes(raw if raw is not None else text.encode("utf-8", "surrogatepass"))
    index = _read_or_documented_error(read_yolo, yolo_root, check_index, split=None, names=names)
    assert index is not None
    by_stem = {r.image_path.stem: r for r in index.records}
    assert torch.equal(by_stem["a"].boxes, torch.tensor([[24.0, 12, 40, 36]])) and by_stem["a"].labels.tolist() == [1]
    assert torch.equal(by_stem["b"].boxes, torch.tensor([[0.0, 0, 64, 48]]))
    assert raw is not None or "z" in by_stem  # text labels only ever drop lines, not the image
    assert len(index.class_names) <= 100_000


# --------------------------------------------------------------------------- images


def _encoded(fmt: str) -> bytes:
    array = np.random.default_rng(0).integers(0, 256, (8, 12, 3), dtype=np.uint8)
    image = Image.fromarray(array)
    buf = io.BytesIO()
    (image.convert("P") if fmt == "GIF" else image).save(buf, format=fmt)
    return buf.getvalue()


ENCODED = {fmt: _encoded(fmt) for fmt in ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")}


@pytest.mark.filterwarnings("ignore::UserWarning:PIL")  # Pillow's notes on odd TIFF tags
@FUZZ
@given(
    fmt=st.sampled_from(sorted(ENCODED)),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8),
    cut=st.one_of(st.none(), st.integers(0, 10**6)),
    random_bytes=st.one_of(st.none(), st.binary(max_size=64)),
    ext=st.sampled_from([".jpg", ".png", ".gif", ".bin", ""]),
)
def test_load_image_on_corrupted_bytes(
    fmt: str, flips: list[tuple[int, int]], cut: int | None, random_bytes: bytes | None, ext: str, fuzz_root: Path
) -> None:
    data = bytearray(ENCODED[fmt]) if random_bytes is None else bytearray(random_bytes)
    for pos, value in flips:
        if data:
            data[pos % len(data)] = value
    if cut is not None and data:
        data = data[: cut % len(data)]
    path = fuzz_root / f"fuzzed{ext}"
    path.write_bytes(bytes(data))
    try:
        image = load_image(path, max_pixels=1_000_000)  # a flipped header byte may claim a huge image
    except ImageError as exc:
        assert str(exc).startswith(f"{path}: ") and exc.name == str(path) and exc.problem, exc
    else:
        assert image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == 3 and is_dense(image)
        assert image.shape[1] > 0 and image.shape[2] > 0
    try:
        h, w = image_size_of(path)
    except ImageError as exc:
        assert str(exc).startswith(f"{path}: "), exc
    else:
        assert h > 0 and w > 0
