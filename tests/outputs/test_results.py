"""Detections to COCO results JSON, per-image JSON and CSV."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from efficientdet.outputs.results import CSV_HEADER, detection_rows, to_coco_json, to_csv_rows, write_detections


def _det() -> dict:
    return {
        "boxes": torch.tensor([[10.0, 20.0, 50.0, 80.0], [0.0, 0.0, 5.5, 5.25]]),
        "scores": torch.tensor([0.9, 0.123456]),
        "labels": torch.tensor([2, 0]),
    }


def test_to_coco_json_xywh_and_category_ids() -> None:
    empty = {"boxes": np.zeros((0, 4)), "scores": [], "labels": []}
    out = to_coco_json([_det(), empty], [7, 8])
    assert len(out) == 2
    assert out[0] == {"image_id": 7, "category_id": 3, "bbox": [10.0, 20.0, 40.0, 60.0], "score": pytest.approx(0.9)}
    assert out[1]["category_id"] == 1 and out[1]["bbox"] == pytest.approx([0, 0, 5.5, 5.25])
    mapped = to_coco_json([_det()], [1], category_ids=[5, 9, 42])
    assert [r["category_id"] for r in mapped] == [42, 5]
    with pytest.raises(ValueError, match="labels must be in"):
        to_coco_json([_det()], [1], category_ids=[5, 9])
    with pytest.raises(ValueError, match=r"^2 image ids for 1 detection dicts$"):
        to_coco_json([_det()], [1, 2])


def test_rows_use_names_then_class_names_then_labels() -> None:
    assert [r[-1] for r in to_csv_rows("a.jpg", _det(), ["x", "y", "z"])] == ["z", "x"]
    assert [r[-1] for r in to_csv_rows("a.jpg", _det())] == ["2", "0"]
    named = dict(_det(), names=["cup", "cat"])
    assert [r[-1] for r in to_csv_rows("a.jpg", named, ["x", "y", "z"])] == ["cup", "cat"]
    row = to_csv_rows("a.jpg", _det())[1]
    assert row[:6] == ["a.jpg", 0.0, 0.0, 5.5, 5.25, 0.1235]
    entry = detection_rows("a.jpg", dict(_det(), image_size=(100, 200)))
    assert entry["height"] == 100 and entry["width"] == 200 and entry["detections"][0]["box"] == [10, 20, 50, 80]


def test_write_json_and_csv(tmp_path: Path) -> None:
    items = [("a.jpg", _det()), ("b.png", {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0)})]
    doc = json.loads(write_detections(tmp_path / "d.json", items, ["x", "y", "z"]).read_text())
    assert [e["file"] for e in doc] == ["a.jpg", "b.png"] and doc[1]["detections"] == []
    assert doc[0]["detections"][0] == {"box": [10.0, 20.0, 50.0, 80.0], "score": 0.9, "label": 2, "name": "z"}
    with open(write_detections(tmp_path / "sub" / "d.csv", items), newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == CSV_HEADER and len(rows) == 3 and rows[1][0] == "a.jpg"
    assert not list(tmp_path.glob("**/*.tmp"))
    with pytest.raises(ValueError, match=re.escape("use .json or .csv")):
        write_detections(tmp_path / "d.txt", items)
