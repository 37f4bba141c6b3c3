"""Pascal VOC XML annotations: reader and writer.

Coordinate convention: VOC stores 1-based, inclusive pixel indices, so a box covering the
whole W x H image is ``xmin=1, ymin=1, xmax=W, ymax=H``. With ``one_based=True`` (default)
we read that as the continuous xyxy box ``(xmin - 1, ymin - 1, xmax, ymax)`` = (0, 0, W, H),
and the writer does the exact inverse, so read(write(x)) == x. Files written 0-based by
some tools then read 1 px too far up-left at most, which is clipped silently at the image
border. Pass ``one_based=False`` to take the four numbers as xyxy as written.

``difficult`` objects are kept as ordinary objects for training (counted under
``counts["difficult"]``) and flagged in ``DetectionRecord.difficult``: evaluation's VOC AP50
leaves them out, as the VOC devkit does; the writer writes the flags back.

XML is parsed with defusedxml: entity declarations (billion laughs) and external entities
(XXE) make that file's image skipped with a warning, never expanded or fetched.
"""

from __future__ import annotations

import os
import re
import shutil
import xml.etree.ElementTree as ET  # only for *writing* our own files; parsing uses defusedxml
from collections.abc import Sequence
from pathlib import Path

import defusedxml
import defusedxml.ElementTree as SafeET

from efficientdet.data.common import (
    IMAGE_EXTENSIONS,
    MAX_SIDE,
    OUTSIDE_ROOT_SKIPPED,
    Issues,
    check_box,
    fmt_num,
    is_file,
    resolve_under,
    short_repr,
)

from .images import ImageError, image_size_of
from .records import DatasetIndex, DetectionRecord

__all__ = ["read_voc", "write_voc"]

# "data": FiftyOne's VOC export (data/ beside labels/)
_AUTO_IMAGE_DIRS = ("JPEGImages", "images", "Images", "data", "")

_Object = tuple[str, tuple[float, float, float, float], str, bool]  # (class name, checked xyxy box, record text, difficult)
_Parsed = tuple[Path, Path, int, int, list[_Object]]  # (annotation file, image file, width, height, objects)


def read_voc(
    annotations_dir: str | os.PathLike[str],
    images_dir: str | os.PathLike[str] | None = None,
    split_file: str | os.PathLike[str] | None = None,
    class_names: Sequence[str] | None = None,
    allow_outside_root: bool = False,
    one_based: bool = True,
) -> DatasetIndex:
    """Read a folder of VOC XML files into a :class:`DatasetIndex`.

    ``split_file`` lists image ids (XML stems), one per line (the whole line when it names an
    XML, else its first token, so ``ImageSets/Main/<class>_train.txt`` works too); default:
    every ``*.xml``.
    Image files are ``images_dir / <filename>``; if ``images_dir`` is None they are looked
    up under the annotations' parent (the root) in ``<folder>/``, ``JPEGImages/``, ``images/``,
    ``Images/``, ``data/``, the root itself and the annotations folder. Class names: ``class_names``
    (objects of other classes are dropped with a warning) or all names found, sorted.
    Image ids are positions in the index. Images without objects are kept (M=0).

    Raises:
        FileNotFoundError: the annotations folder or split file does not exist.
    """
    ann_dir = Path(os.path.abspath(annotations_dir))  # without ".." parts, as messages show it
    if not ann_dir.is_dir():
        raise FileNotFoundError(f"{ann_dir}: VOC annotations folder not found")
    root = Path(os.path.abspath(images_dir)) if images_dir is not None else ann_dir.parent
    issues = Issues()
    ids = _read_ids(ann_dir, Path(split_file) if split_file is not None else None, issues)
    parsed = _parse_all(ids, ann_dir, root, images_dir is not None, allow_outside_root, one_based, issues)

    names = list(class_names) if class_names is not None else sorted({o[0] for p in parsed for o in p[4]})
    if class_names is None:
        _report_case_variants(names, ann_dir, issues)
    label_of = {n: i for i, n in enumerate(names)}
    records: list[DetectionRecord] = []
    for xml, image_path, w, h, objects in parsed:
        boxes: list[tuple[float, float, float, float]] = []
        labels: list[int] = []
        difficult: list[bool] = []
        for name, box, rec, hard in objects:
            if name not in label_of:
                issues.report(xml, rec, f"unknown class name {short_repr(name)}", "object dropped", "unknown_class")
                continue
            boxes.append(box)
            labels.append(label_of[name])
            difficult.append(hard)
        records.append(DetectionRecord(image_path, boxes, labels, len(records), w, h, difficult))
    issues.finish(ann_dir)
    return DatasetIndex(records, names, issues.lines, root, None, dict(issues.counts))


def _report_case_variants(names: list[str], ann_dir: Path, issues: Issues) -> None:
    """Warn about class names that differ only in case or spacing ("Raccoon", "raccoon"): hand-typed
    labels that become separate classes."""
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(" ".join(n.casefold().split()), []).append(n)
    for variants in (g for g in groups.values() if len(g) > 1):
        shown = ", ".join(repr(v) for v in variants)
        issues.report(
            ann_dir, "class names", f"{shown} differ only in case or spacing",
            f"read as {len(variants)} separate classes (edit the XML files to merge them)", "class_variants",
        )


def _read_ids(ann_dir: Path, split_file: Path | None, issues: Issues) -> list[str]:
    """Image ids in order, duplicates reported and dropped."""
    if split_file is None:
        return sorted(p.stem for p in ann_dir.glob("*.xml"))
    try:
        lines = split_file.read_text(encoding="utf-8-sig", errors="replace").splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"{split_file}: VOC split file not found") from None
    ids: list[str] = []
    seen: set[str] = set()
    for n, line in enumerate(lines, 1):
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        # A stem may hold spaces ("IMG 0001"): the whole line when it names an XML, else its
        # first token (ImageSets/Main/<class>_train.txt lines are "000005 -1").
        stem = line.strip() if len(tokens) > 1 and is_file(ann_dir / f"{line.strip()}.xml") else tokens[0]
        if stem in seen:
            issues.report(split_file, f"line {n}", f"duplicate image id {stem!r}", "second one skipped", "duplicate_image")
            continue
        seen.add(stem)
        ids.append(stem)
    return ids


def _parse_all(
    ids: list[str], ann_dir: Path, root: Path, explicit_dir: bool, allow: bool, one_based: bool, issues: Issues
) -> list[_Parsed]:
    """The usable annotations of ``ids``, in order; missing files and second claims on an image reported."""
    parsed: list[_Parsed] = []
    used_by: dict[Path, Path] = {}  # image file -> the annotation that claimed it first
    for stem in ids:
        xml = resolve_under(ann_dir, stem + ".xml", allow)
        if xml is None or not is_file(xml):
            problem = "escapes the annotations folder" if xml is None else "not found"
            issues.report(ann_dir, f"image id {stem!r}", f"annotation file {stem}.xml {problem}", "image skipped", "missing_annotation")
            continue
        item = _parse_xml(xml, root, explicit_dir, ann_dir.name, allow, one_based, issues)
        if item is None:
            continue
        if item[1] in used_by:  # two annotation files for one image: training on it twice
            issues.report(
                xml, f"image {item[1].name!r}", f"image already annotated by {used_by[item[1]].name}",
                "second annotation skipped", "duplicate_image",
            )
            continue
        used_by[item[1]] = xml
        parsed.append(item)
    return parsed


def _parse_xml(
    xml: Path, root: Path, explicit_dir: bool, ann_dir_name: str, allow: bool, one_based: bool, issues: Issues
) -> _Parsed | None:
    """Parse one annotation; None (after reporting) if the image cannot be used."""
    ann = _load_xml(xml, issues)
    if ann is None:
        return None
    filename = (ann.findtext("filename") or "").strip() or xml.stem
    rec = f"image {short_repr(filename)}"
    folder = (ann.findtext("folder") or "").strip()
    dirs: list[str] = [""] if explicit_dir else list(dict.fromkeys([folder, *_AUTO_IMAGE_DIRS, ann_dir_name]))
    image_path = _find_image(xml, rec, filename, dirs, root, allow, issues)
    if image_path is None:
        return None
    size = _image_size(xml, rec, ann, image_path, issues)
    if size is None:
        return None
    w, h = size
    return xml, image_path, w, h, _read_objects(xml, ann, w, h, one_based, issues)


def _load_xml(xml: Path, issues: Issues) -> ET.Element | None:
    """The ``<annotation>`` root element of ``xml``; None (after reporting) if unparsable or unsafe."""
    try:
        ann = _parse_root(xml)
    except SafeET.ParseError as exc:
        line, col = getattr(exc, "position", (0, 0))
        problem = f"malformed XML at line {line} column {col}{_encoding_hint(xml)}"
        issues.report(xml, "annotation", problem, "image skipped", "malformed")
        return None
    except defusedxml.DefusedXmlException as exc:
        issues.report(xml, "annotation", _forbidden(exc), "image skipped", "unsafe_xml")
        return None
    except OSError as exc:
        issues.report(xml, "annotation", f"cannot read file ({exc.strerror or exc})", "image skipped", "malformed")
        return None
    except (LookupError, ValueError) as exc:  # <?xml encoding="bogus"?> is a LookupError
        issues.report(xml, "annotation", f"malformed XML ({type(exc).__name__}: {exc})", "image skipped", "malformed")
        return None
    if ann.tag != "annotation":
        issues.report(xml, "annotation", f"root element is <{ann.tag}>, not <annotation>", "image skipped", "malformed")
        return None
    return ann


# The encoding an XML declaration names: <?xml version="1.0" encoding="GBK"?>
_DECLARED_ENCODING = re.compile(rb"""\s*<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._-]{1,40})["']""")


def _parse_root(xml: Path) -> ET.Element:
    """The root element of ``xml``. expat decodes only UTF-8/16 and single-byte encodings: a
    file declared GBK, Shift_JIS, Big5... (valid XML; labelImg writes its system's encoding) is
    decoded with Python's codec first (was skipped as 'multi-byte encodings are not supported')."""
    data = xml.read_bytes()
    try:
        return SafeET.fromstring(data)
    except ValueError as exc:
        declared = _DECLARED_ENCODING.match(data)
        if declared is None or "multi-byte encodings" not in str(exc):
            raise
        return SafeET.fromstring(data.decode(declared.group(1).decode("ascii")))


def _encoding_hint(xml: Path) -> str:
    """Why a file may not parse: text in a legacy encoding (cp1252, latin-1) with no declaration."""
    try:
        data = xml.read_bytes()
        if _DECLARED_ENCODING.match(data) is None and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
            data.decode("utf-8")
    except UnicodeDecodeError:
        return ' (the file is not UTF-8 and declares no encoding: add <?xml version="1.0" encoding="..."?>)'
    except OSError:
        pass
    return ""


def _find_image(
    xml: Path, rec: str, filename: str, dirs: list[str], root: Path, allow: bool, issues: Issues
) -> Path | None:
    """The image file ``filename`` under the first of ``dirs`` (relative to ``root``) that holds it
    (also trying image extensions when it has none); None (after reporting) if there is none."""
    has_ext = os.path.splitext(filename)[1].lower() in IMAGE_EXTENSIONS
    names = [filename] if has_ext else [filename, *(filename + e for e in IMAGE_EXTENSIONS)]
    if resolve_under(root, filename, allow_outside_root=False) is None and not allow:
        dirs = []  # absolute or escaping on its own: no folder prefix may make it acceptable
    elif os.path.isabs(filename.replace("\\", "/")):
        dirs = [""]
    tried: list[Path] = []
    for d in dirs:
        for name in names:
            p = resolve_under(root, f"{d}/{name}" if d else name, allow)
            if p is not None and p not in tried:
                tried.append(p)
                if is_file(p):
                    return p
    if not tried:
        issues.report(
            xml, rec, f"image path is absolute or escapes the dataset root {root}",
            OUTSIDE_ROOT_SKIPPED, "outside_root",
        )
    else:
        shown = ", ".join(str(p) for p in tried[:4]) + (", ..." if len(tried) > 4 else "")
        issues.report(xml, rec, f"image file not found (tried {shown})", "image skipped", "missing_image")
    return None


def _image_size(xml: Path, rec: str, ann: ET.Element, image_path: Path, issues: Issues) -> tuple[int, int] | None:
    """``(width, height)`` from ``<size>``, else from the image header; None (after reporting) if neither is usable."""
    w, h = _size(ann)
    if w is not None and h is not None:
        return w, h
    try:
        height, width = image_size_of(image_path)
    except ImageError as exc:
        issues.report(xml, rec, f"no usable <size> and unreadable image header ({exc.problem})", "image skipped", "bad_image")
        return None
    if width > MAX_SIDE or height > MAX_SIDE:
        problem = f"image header says {width}x{height} pixels (sides over {MAX_SIDE})"
        issues.report(xml, rec, problem, "image skipped", "bad_image")
        return None
    return width, height


def _read_objects(xml: Path, ann: ET.Element, w: int, h: int, one_based: bool, issues: Issues) -> list[_Object]:
    """The ``<object>`` s with a name and a valid box (clipped to the image), in file order."""
    objects: list[_Object] = []
    for k, obj in enumerate(ann.findall("object"), 1):
        name = (obj.findtext("name") or "").strip()
        orec = f"object #{k} ({short_repr(name)})" if name else f"object #{k}"
        box = _bndbox(obj)
        if not name or box is None:
            what = "missing <name>" if not name else "missing or non-numeric <bndbox>"
            issues.report(xml, orec, what, "object dropped", "malformed")
            continue
        if one_based:
            box = (box[0] - 1.0, box[1] - 1.0, box[2], box[3])
        checked = check_box(box, (w, h), issues, xml, orec)
        if checked is None:
            continue
        hard = (obj.findtext("difficult") or "0").strip() == "1"
        if hard:
            issues.count("difficult")
        objects.append((name, checked, orec, hard))
    return objects


def _size(ann: ET.Element) -> tuple[int | None, int | None]:
    """``<size>`` width and height if present, positive and at most MAX_SIDE."""
    try:
        w = int(float(ann.findtext("size/width") or "0"))
        h = int(float(ann.findtext("size/height") or "0"))
    except (ValueError, OverflowError):  # text, NaN, inf
        return None, None
    return (w, h) if 0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE else (None, None)


def _forbidden(exc: Exception) -> str:
    """The problem text for XML that defusedxml refused (entities, external references)."""
    if isinstance(exc, defusedxml.EntitiesForbidden):
        where = f" with external source {exc.sysid!r}" if exc.sysid else ""
        what = f"entity declaration {exc.name!r}{where}"
    elif isinstance(exc, defusedxml.ExternalReferenceForbidden):
        what = f"external reference {exc.sysid!r}"
    elif isinstance(exc, defusedxml.DTDForbidden):
        what = f"DTD {exc.name!r}"
    else:
        what = type(exc).__name__
    return f"forbidden XML construct ({what}): entity expansion and external entities are refused for safety"


def _bndbox(obj: ET.Element) -> tuple[float, float, float, float] | None:
    try:
        values = [float(obj.findtext(f"bndbox/{k}") or "") for k in ("xmin", "ymin", "xmax", "ymax")]
    except ValueError:
        return None
    return values[0], values[1], values[2], values[3]


def write_voc(
    index: DatasetIndex,
    out_dir: str | os.PathLike[str],
    copy_images: bool = True,
    split: str | None = None,
    one_based: bool = True,
) -> Path:
    """Write ``index`` as VOC: ``out_dir/Annotations/<stem>.xml`` (+ ``JPEGImages/``).

    With ``copy_images`` the images are copied to ``JPEGImages/``; otherwise ``<folder>``
    points at their current folder relative to ``out_dir`` (reading it back then needs
    ``allow_outside_root=True`` if that is outside). ``split`` also writes
    ``ImageSets/Main/<split>.txt``. Returns the Annotations folder.
    """
    out = Path(out_dir)
    ann_dir, img_dir = out / "Annotations", out / "JPEGImages"
    ann_dir.mkdir(parents=True, exist_ok=True)
    if copy_images:
        img_dir.mkdir(exist_ok=True)
    stems: list[str] = []
    used: set[str] = set()
    for rec in index.records:
        name = rec.image_path.name
        stem = Path(name).stem
        if stem in used:  # different folders, same file name: keep both
            stem, name = f"{rec.image_id}_{stem}", f"{rec.image_id}_{name}"
        used.add(stem)
        stems.append(stem)
        if copy_images:
            shutil.copyfile(rec.image_path, img_dir / name)
            folder = "JPEGImages"
        else:
            name = rec.image_path.name
            folder = os.path.relpath(os.path.abspath(rec.image_path.parent), os.path.abspath(out)).replace(os.sep, "/")
        w, h = rec.width, rec.height
        if w is None or h is None:
            h, w = image_size_of(rec.image_path)
        ET.ElementTree(_voc_xml(folder, name, w, h, rec, index.class_names, one_based)).write(
            ann_dir / f"{stem}.xml", encoding="utf-8"
        )
    if split is not None:
        sets = out / "ImageSets" / "Main"
        sets.mkdir(parents=True, exist_ok=True)
        (sets / f"{split}.txt").write_text("".join(s + "\n" for s in stems), encoding="utf-8")
    return ann_dir


def _voc_xml(
    folder: str, name: str, w: int, h: int, rec: DetectionRecord, class_names: list[str], one_based: bool
) -> ET.Element:
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = folder
    ET.SubElement(ann, "filename").text = name
    size = ET.SubElement(ann, "size")
    for key, value in (("width", w), ("height", h), ("depth", 3)):
        ET.SubElement(size, key).text = str(value)
    shift = 1.0 if one_based else 0.0
    for box, label, hard in zip(rec.boxes.tolist(), rec.labels.tolist(), rec.difficult.tolist()):
        obj = ET.SubElement(ann, "object")
        ET.SubElement(obj, "name").text = class_names[label]
        ET.SubElement(obj, "difficult").text = "1" if hard else "0"
        bnd = ET.SubElement(obj, "bndbox")
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), (box[0] + shift, box[1] + shift, box[2], box[3])):
            ET.SubElement(bnd, key).text = fmt_num(value)
    ET.indent(ann)
    return ann
