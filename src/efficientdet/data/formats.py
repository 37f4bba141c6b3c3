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
from .yolo import read_yolo, write_yolo

__all__ = [
    "DataIssue",
    "DatasetIndex",
    "DetectionRecord",
    "detect_format",
    "read_coco",
    "read_dataset",
    "read_voc",
    "read_yolo",
    "write_coco",
    "write_voc",
    "write_yolo",
]

_READERS = {"coco": read_coco, "voc": read_voc, "yolo": read_yolo}


def detect_format(path: str | os.PathLike[str]) -> str:
    """``"coco"``, ``"yolo"`` or ``"voc"`` for a dataset path.

    A ``.json`` file is COCO; a ``.yaml`` file or a folder with ``data.yaml`` or ``labels/``
    is YOLO; a folder with ``Annotations/`` or ``*.xml`` files is VOC.
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
    if any((p / n).is_file() for n in ("data.yaml", "data.yml", "dataset.yaml")) or (p / "labels").is_dir():
        return "yolo"
    if (p / "Annotations").is_dir() or next(p.glob("*.xml"), None) is not None:
        return "voc"
    raise ValueError(
        f"{p}: cannot tell the dataset format (no data.yaml or labels/ for YOLO, "
        "no Annotations/ or *.xml for VOC); pass a COCO .json file or use read_coco/read_voc/read_yolo"
    )


def read_dataset(path_or_spec: str | os.PathLike[str] | Mapping[str, Any], **kw: Any) -> DatasetIndex:
    """Read a dataset in whatever format :func:`detect_format` finds.

    ``path_or_spec`` is a path, or a mapping ``{"format": "coco"|"voc"|"yolo", "path": ...,
    <reader arguments>}`` (e.g. from a config file). ``kw`` go to the reader. For VOC
    folders, ``split="train"`` means ``ImageSets/Main/train.txt``; ``images_dir`` defaults
    to automatic lookup under the folder.
    """
    if isinstance(path_or_spec, Mapping):
        spec = dict(path_or_spec)
        if "path" not in spec:
            raise ValueError(f"dataset spec {spec!r} has no 'path'")
        path = Path(spec.pop("path"))
        fmt = str(spec.pop("format", "") or detect_format(path)).lower()
        kw = {**spec, **kw}
    else:
        path = Path(path_or_spec)
        fmt = detect_format(path)
    if fmt not in _READERS:
        raise ValueError(f"unknown dataset format {fmt!r}; expected one of {sorted(_READERS)}")
    if fmt == "coco":
        return read_coco(path, **kw)
    if fmt == "yolo":
        return read_yolo(path, **kw)
    # VOC: a folder holding Annotations/ (the usual VOC2007-style root) or the XMLs themselves.
    ann_dir = path / "Annotations" if (path / "Annotations").is_dir() else path
    split = kw.pop("split", None)
    if split is not None and "split_file" not in kw:
        split_path = Path(split)
        if not split_path.is_file():
            split_path = ann_dir.parent / "ImageSets" / "Main" / f"{split}.txt"
        kw["split_file"] = split_path
    return read_voc(ann_dir, **kw)
