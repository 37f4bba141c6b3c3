"""Detections to files: COCO results JSON, per-image JSON, and CSV (one row per box).

All functions take ``Detector`` result dicts: ``boxes`` [M, 4] xyxy pixels, ``scores`` [M],
``labels`` [M] 0-based, optional ``names`` (M strings). Conversions are vectorised per image
(numpy + ``tolist``); only the final per-box dicts/rows are built in Python.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..fs import atomic_open

__all__ = ["CSV_HEADER", "detection_rows", "to_coco_json", "to_csv_rows", "write_detections"]

CSV_HEADER: tuple[str, ...] = ("file", "x0", "y0", "x1", "y1", "score", "label", "name")


def _np(x: Any, dtype: type, tail: tuple[int, ...] = ()) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x if x is not None else [], dtype=dtype).reshape(-1, *tail)


def _arrays(det: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes [M, 4] float64, scores [M] float64, labels [M] int64), lengths checked."""
    boxes = _np(det.get("boxes"), np.float64, (4,))
    scores = _np(det.get("scores"), np.float64)
    labels = _np(det.get("labels"), np.int64)
    if not len(boxes) == len(scores) == len(labels):
        raise ValueError(f"boxes, scores, labels lengths differ: {len(boxes)}, {len(scores)}, {len(labels)}")
    return boxes, scores, labels


def _names(det: Mapping[str, Any], labels: np.ndarray, class_names: Sequence[str] | None) -> list[str]:
    """The detections' class names: ``det["names"]``, else ``class_names[label]``, else the label."""
    if det.get("names") is not None:
        return [str(n) for n in det["names"]]
    if class_names is not None:
        n = len(class_names)
        return [str(class_names[i]) if 0 <= i < n else str(i) for i in labels.tolist()]
    return [str(i) for i in labels.tolist()]


def to_coco_json(
    detections: Sequence[Mapping[str, Any]],
    image_ids: Sequence[int],
    category_ids: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """COCO results format: ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` per box.

    ``category_id`` is ``category_ids[label]`` (a dataset's ids, see ``DatasetIndex.category_ids``)
    or ``label + 1`` (the 90-class COCO weights' layout) without ``category_ids``.
    """
    if len(detections) != len(image_ids):
        raise ValueError(f"{len(image_ids)} image ids for {len(detections)} detection dicts")
    cat_map = np.asarray(list(category_ids), dtype=np.int64) if category_ids is not None else None
    out: list[dict[str, Any]] = []
    for image_id, det in zip(image_ids, detections):
        boxes, scores, labels = _arrays(det)
        if cat_map is None:
            cats = labels + 1
        else:
            if len(labels) and (labels.min() < 0 or labels.max() >= len(cat_map)):
                raise ValueError(f"image {image_id}: labels must be in [0, {len(cat_map)}) for the category ids given")
            cats = cat_map[labels]
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        iid = int(image_id)
        out.extend(
            {"image_id": iid, "category_id": c, "bbox": b, "score": s}
            for b, s, c in zip(xywh.tolist(), scores.tolist(), cats.tolist())
        )
    return out


def to_csv_rows(file: str, det: Mapping[str, Any], class_names: Sequence[str] | None = None) -> list[list[Any]]:
    """CSV rows ``[file, x0, y0, x1, y1, score, label, name]`` (see :data:`CSV_HEADER`), one per box.

    Coordinates are rounded to 0.01 px and scores to 1e-4: more digits are noise.
    """
    boxes, scores, labels = _arrays(det)
    names = _names(det, labels, class_names)
    return [
        [file, *b, s, lab, n]
        for b, s, lab, n in zip(boxes.round(2).tolist(), scores.round(4).tolist(), labels.tolist(), names)
    ]


def detection_rows(file: str, det: Mapping[str, Any], class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """One image as a JSON-ready dict: ``{"file", "detections": [{"box": xyxy, "score",
    "label", "name"}, ...]}``, plus ``"height"``/``"width"`` when ``det`` has ``image_size`` (h, w)."""
    boxes, scores, labels = _arrays(det)
    names = _names(det, labels, class_names)
    entry: dict[str, Any] = {"file": file}
    if det.get("image_size") is not None:
        entry["height"], entry["width"] = (int(v) for v in det["image_size"])
    entry["detections"] = [
        {"box": b, "score": s, "label": lab, "name": n}
        for b, s, lab, n in zip(boxes.round(2).tolist(), scores.round(4).tolist(), labels.tolist(), names)
    ]
    return entry


def write_detections(
    path: str | os.PathLike[str],
    items: Iterable[tuple[str, Mapping[str, Any]]],
    class_names: Sequence[str] | None = None,
) -> Path:
    """Write ``(file, detections)`` pairs to ``path``; the format follows its extension.

    ``.json``: a list with one :func:`detection_rows` dict per image (images without
    detections included, with an empty list). ``.csv``: :data:`CSV_HEADER` then one
    :func:`to_csv_rows` row per box. Written to a temporary file and renamed, so a crash
    never leaves half a file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".csv"):
        raise ValueError(f"{path}: unknown detections format {suffix or '(no extension)'!r}; use .json or .csv")
    with atomic_open(path, "w", newline="" if suffix == ".csv" else None, encoding="utf-8") as f:
        if suffix == ".json":
            json.dump([detection_rows(file, det, class_names) for file, det in items], f, indent=1)
            f.write("\n")
        else:
            writer = csv.writer(f)
            writer.writerow(CSV_HEADER)
            for file, det in items:
                writer.writerows(to_csv_rows(file, det, class_names))
    return path
