"""Pascal VOC reader details: files in legacy text encodings."""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image

from efficientdet.data.formats import DataIssue, read_voc

_XML = (
    "<annotation><filename>a.jpg</filename><size><width>64</width><height>48</height></size>"
    "<object><name>mapache é</name><bndbox><xmin>2</xmin><ymin>3</ymin><xmax>20</xmax><ymax>30</ymax>"
    "</bndbox></object></annotation>"
)


def _read(tmp_path: Path, data: bytes) -> tuple[int, list[str]]:
    Image.new("RGB", (64, 48)).save(tmp_path / "a.jpg")
    (tmp_path / "a.xml").write_bytes(data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        index = read_voc(tmp_path)
    return index.num_objects, [str(w.message) for w in caught if issubclass(w.category, DataIssue)]


def test_legacy_encoding_without_declaration_is_named(tmp_path: Path) -> None:
    """cp1252 text with no ``<?xml encoding?>``: invalid XML; the warning said only 'malformed
    XML at line 1 column N', which points at a good-looking line."""
    objects, messages = _read(tmp_path, _XML.encode("cp1252"))
    assert objects == 0 and len(messages) == 1
    assert "malformed XML at line 1" in messages[0] and "not UTF-8 and declares no encoding" in messages[0]


def test_declared_legacy_encoding_reads(tmp_path: Path) -> None:
    objects, messages = _read(tmp_path, b'<?xml version="1.0" encoding="cp1252"?>' + _XML.encode("cp1252"))
    assert objects == 1 and messages == []


def test_malformed_utf8_file_gets_no_encoding_hint(tmp_path: Path) -> None:
    objects, messages = _read(tmp_path, _XML.encode("utf-8")[:-5])
    assert objects == 0 and len(messages) == 1 and "encoding" not in messages[0]
