"""Training-data readers (COCO JSON, Pascal VOC, YOLO) and writers, and format detection.

Every reader returns a :class:`~efficientdet.data.records.DatasetIndex` with boxes as xyxy
float pixels. A bad record (missing image, broken box, unknown class, malformed line...) is
skipped or repaired with a :class:`~efficientdet.data.records.DataIssue` warning naming the
file and the record, and listed in ``index.skipped``; only an annotation file that cannot be
read at all raises (``ValueError`` naming it, or ``FileNotFoundError``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .coco import read_coco, write_coco
from .records import DataIssue, DatasetIndex, DetectionRecord
from .voc import read_voc, write_voc
from .yolo import NAMES_FILES, read_yolo, write_yolo

__all__ = [
    "DataIssue",
    "DatasetIndex",
    "DetectionRecord",
    "detect_format",
    "read_coco",
    "read_dataset",
    "read_split",
    "read_voc",
    "read_yolo",
    "voc_annotations_dir",
    "voc_split_file",
    "write_coco",
    "write_voc",
    "write_yolo",
]

_READERS = {"coco": read_coco, "voc": read_voc, "yolo": read_yolo}


def detect_format(path: str | os.PathLike[str]) -> str:
    """``"coco"``, ``"yolo"`` or ``"voc"`` for a dataset path.

    A ``.json`` file is COCO; a ``.yaml`` file or a folder with ``data.yaml`` or ``labels/``
    is YOLO; a folder with ``Annotations/`` (or ``annotations/`` holding XMLs) or ``*.xml``
    files is VOC; else a folder with ``classes.txt`` / ``obj.names`` (darknet, labelImg) is YOLO.
    """
    p = Path(path)
    if p.is_file():
        if p.suffix.lower() == ".json":
            return "coco"
        if p.suffix.lower() in (".yaml", ".yml"):
            return "yolo"
        raise ValueError(f"{p}: cannot tell the dataset format (expected a .json or .yaml file, or a folder)")
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: dataset not found")
    # FiftyOne's VOC export keeps its XMLs in labels/ (beside data/): that labels/ is VOC's
    yolo_labels = (p / "labels").is_dir() and voc_annotations_dir(p) != p / "labels"
    if any((p / n).is_file() for n in ("data.yaml", "data.yml", "dataset.yaml")) or yolo_labels:
        return "yolo"
    if voc_annotations_dir(p) != p or next(p.glob("*.xml"), None) is not None:
        return "voc"
    if any((p / n).is_file() for n in NAMES_FILES):  # darknet / labelImg: images, labels, classes.txt side by side
        return "yolo"
    raise ValueError(
        f"{p}: cannot tell the dataset format (no data.yaml, labels/ or classes.txt for YOLO, "
        "no Annotations/ or *.xml for VOC); give a COCO .json file, a VOC folder or a YOLO folder / data.yaml"
    )


def read_dataset(path_or_spec: str | os.PathLike[str] | Mapping[str, Any], **kw: Any) -> DatasetIndex:
    """Read a dataset in whatever format :func:`detect_format` finds.

    ``path_or_spec`` is a path, or a mapping ``{"format": "coco"|"voc"|"yolo", "path": ...,
    <reader arguments>}`` (e.g. from a config file). ``kw`` go to the reader. For VOC
    folders, ``split="train"`` means ``ImageSets/Main/train.txt`` (or ``splits/train.txt``
    when only that exists); ``images_dir`` defaults
    to automatic lookup under the folder.
    """
    path, fmt, spec_kw = _parse_spec(path_or_spec)
    kw = {**spec_kw, **kw}
    if fmt not in _READERS:
        raise ValueError(f"unknown dataset format {fmt!r}; expected one of {sorted(_READERS)}")
    if fmt == "coco":
        return read_coco(path, **kw)
    if fmt == "yolo":
        return read_yolo(path, **kw)
    ann_dir = voc_annotations_dir(path)
    split = kw.pop("split", None)
    if split is not None and "split_file" not in kw:
        kw["split_file"] = voc_split_file(ann_dir.parent, split)
        if not kw["split_file"].is_file():  # name both places a list is looked for
            root = ann_dir.parent
            tried = f"{root / 'ImageSets' / 'Main' / f'{split}.txt'}, {root / 'splits' / f'{split}.txt'}"
            raise FileNotFoundError(f"{root}: no list of VOC split {split!r} (tried {tried})")
    return read_voc(ann_dir, **kw)


def read_split(path_or_spec: str | os.PathLike[str] | Mapping[str, Any], split: str, **kw: Any) -> DatasetIndex:
    """Read ``split`` (``"train"``, ``"val"``) of a dataset where its format has splits.

    A COCO file is its own split; a YOLO folder reads ``split``; a VOC folder reads it when
    its list exists (``ImageSets/Main/`` or ``splits/``), else every XML. A mapping that
    names its own ``split`` keeps it. ``kw`` go to the reader.
    """
    path, fmt, spec_kw = _parse_spec(path_or_spec)
    if "split" in spec_kw:
        return read_dataset(path_or_spec, **kw)
    if fmt == "yolo" or (fmt == "voc" and voc_split_file(voc_annotations_dir(path).parent, split).is_file()):
        kw["split"] = split
    return read_dataset(path_or_spec, **kw)


def _parse_spec(path_or_spec: str | os.PathLike[str] | Mapping[str, Any]) -> tuple[Path, str, dict[str, Any]]:
    """(path, format, the spec's reader arguments) of a dataset path or config mapping."""
    if isinstance(path_or_spec, Mapping):
        spec = dict(path_or_spec)
        if "path" not in spec:
            raise ValueError(f"dataset spec {spec!r} has no 'path'")
        path = Path(spec.pop("path"))
        return path, str(spec.pop("format", "") or detect_format(path)).lower(), spec
    path = Path(path_or_spec)
    return path, detect_format(path), {}


def voc_annotations_dir(root: Path) -> Path:
    """The XML folder of a VOC root: ``Annotations/`` (VOC2007-style), ``annotations/`` holding
    XMLs (the layout of many tutorial datasets, e.g. ``annotations/ images/ splits/``),
    ``labels/`` holding XMLs and no YOLO ``.txt`` (FiftyOne's ``data/ labels/`` export), else
    ``root`` itself (the XMLs side by side)."""
    if (root / "Annotations").is_dir():
        return root / "Annotations"
    lower = root / "annotations"
    if lower.is_dir() and next(lower.glob("*.xml"), None) is not None:
        return lower
    labels = root / "labels"
    if labels.is_dir() and next(labels.glob("*.xml"), None) is not None and next(labels.glob("*.txt"), None) is None:
        return labels
    return root


def voc_split_file(root: Path, split: str) -> Path:
    """A VOC split's list of stems: ``split`` itself if it is a file, else
    ``ImageSets/Main/<split>.txt``, else ``splits/<split>.txt`` when only that exists."""
    if Path(split).is_file():
        return Path(split)
    official = root / "ImageSets" / "Main" / f"{split}.txt"
    tutorial = root / "splits" / f"{split}.txt"
    return tutorial if not official.is_file() and tutorial.is_file() else official
