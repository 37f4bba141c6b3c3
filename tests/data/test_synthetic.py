"""Tests for the synthetic shapes dataset: determinism, tight boxes, splits, options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from efficientdet.data import synthetic
from efficientdet.data.coco import read_coco
from efficientdet.data.synthetic import SHAPES, make_synthetic_dataset


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    a = make_synthetic_dataset(tmp_path / "a", num_images=4, image_size=64, seed=5)
    b = make_synthetic_dataset(tmp_path / "b", num_images=4, image_size=64, seed=5)
    c = make_synthetic_dataset(tmp_path / "c", num_images=4, image_size=64, seed=6)
    assert _files(a.parent) == _files(b.parent)
    assert _files(a.parent) != _files(c.parent)
    # Image i depends only on (seed, i): more images leave the first ones unchanged.
    d = make_synthetic_dataset(tmp_path / "d", num_images=6, image_size=64, seed=5)
    assert (d.parent / "images" / "000003.jpg").read_bytes() == (a.parent / "images" / "000003.jpg").read_bytes()


def test_read_back_matches_json(tmp_path: Path) -> None:
    train = make_synthetic_dataset(tmp_path, num_images=6, image_size=(80, 120), max_objects=5, seed=2)
    data = json.loads(train.read_text())
    index = read_coco(train)
    assert index.skipped == [] and index.class_names == ["circle", "square", "triangle"]
    assert index.category_ids == [1, 2, 3] and len(index) == 6
    for rec in index.records:
        anns = [a for a in data["annotations"] if a["image_id"] == rec.image_id]
        want = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]).reshape(-1, 4)
        assert torch.equal(rec.boxes, want.float())
        assert rec.labels.tolist() == [a["category_id"] - 1 for a in anns]
        assert (rec.width, rec.height) == (120, 80)


@pytest.mark.parametrize("classes", [("circle", "square", "triangle"), SHAPES[3:8]])
def test_boxes_are_tight_and_shapes_apart(monkeypatch: pytest.MonkeyPatch, classes: tuple[str, ...]) -> None:
    # A black background makes every non-black pixel part of a shape (no JPEG involved).
    monkeypatch.setattr(synthetic, "_background", lambda rng, h, w: np.zeros((h, w, 3)))
    for i in range(8):
        rng = np.random.default_rng([0, i])
        image, objects = synthetic._render(rng, 90, 110, classes, 1, 6, (0.08, 0.4))
        painted = image.max(-1) > 40
        covered = np.zeros_like(painted)
        for _, (x0, y0, x1, y1), area in objects:
            inside = painted[y0:y1, x0:x1]
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            assert 0 < area <= inside.sum() + 1e-9 and 0.08 * 90 - 2 <= max(x1 - x0, y1 - y0) <= 0.4 * 90 + 2
            assert not covered[y0:y1, x0:x1].any()  # boxes do not overlap
            covered[y0:y1, x0:x1] = True
        assert not (painted & ~covered).any()  # nothing drawn outside the boxes


def test_val_split_sizes_and_background_images(tmp_path: Path) -> None:
    train = make_synthetic_dataset(
        tmp_path, num_images=10, image_size=((40, 60), (50, 70)), classes=SHAPES, min_objects=0,
        max_objects=3, val_fraction=0.3, seed=0,
    )
    val = tmp_path / "val.json"
    t, v = read_coco(train), read_coco(val)
    assert len(t) == 7 and len(v) == 3 and {r.image_id for r in t.records}.isdisjoint(r.image_id for r in v.records)
    assert t.class_names == list(SHAPES)
    sizes = {(r.height, r.width) for r in t.records + v.records}
    assert len(sizes) > 1 and all(40 <= h <= 60 and 50 <= w <= 70 for h, w in sizes)
    sides = [float((b[2:] - b[:2]).max()) for r in t.records + v.records for b in r.boxes]
    assert max(sides) - min(sides) > 5  # varied object sizes


def test_options_are_checked(tmp_path: Path) -> None:
    make_synthetic_dataset(tmp_path, num_images=1, image_size=32)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        make_synthetic_dataset(tmp_path, num_images=1, image_size=32)
    make_synthetic_dataset(tmp_path, num_images=1, image_size=32, overwrite=True)
    with pytest.raises(ValueError, match="unknown: \\['blob'\\]"):
        make_synthetic_dataset(tmp_path / "x", classes=("circle", "blob"))
    with pytest.raises(ValueError, match=r"^val_fraction must be in \[0, 1\), got 1\.0$"):
        make_synthetic_dataset(tmp_path / "y", val_fraction=1.0)
    with pytest.raises(ValueError, match=r"^image_size must be >= 16 pixels with lo <= hi, got \(8, 64\)$"):
        make_synthetic_dataset(tmp_path / "z", image_size=(8, 64))


def test_overwrite_without_a_val_split_removes_the_old_val_json(tmp_path: Path) -> None:
    """A stale val.json beside a regenerated train.json named images that are now training images."""
    make_synthetic_dataset(tmp_path, num_images=5, image_size=32, val_fraction=0.4)
    assert (tmp_path / "val.json").is_file()
    make_synthetic_dataset(tmp_path, num_images=5, image_size=32, overwrite=True)
    assert not (tmp_path / "val.json").exists()
    assert len(read_coco(tmp_path / "train.json").records) == 5
