"""draw_detections: colours, label placement, thresholds, inputs, EXIF orientation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from efficientdet.outputs.visualize import PALETTE, _text_colour, class_colour, draw_detections


def _det(boxes: list[list[float]], scores: list[float], labels: list[int], **extra: object) -> dict:
    return {"boxes": torch.tensor(boxes), "scores": torch.tensor(scores), "labels": torch.tensor(labels), **extra}


def test_outline_in_class_colour_where_the_box_is() -> None:
    image = np.full((200, 300, 3), 128, np.uint8)
    out = np.asarray(draw_detections(image, _det([[50, 80, 150, 160]], [0.9], [2]), line_width=2))
    assert out.shape == (200, 300, 3)
    colour = PALETTE[2]
    # Continuous box 50..150 covers pixel columns 50..149: the outline hugs those, 2 px inward.
    for y, x in [(120, 50), (120, 51), (120, 149), (120, 148), (159, 100), (158, 100)]:
        assert tuple(out[y, x]) == colour, (y, x)
    for y, x in [(120, 52), (120, 147), (120, 150), (120, 49), (161, 100), (120, 100)]:
        assert tuple(out[y, x]) == (128, 128, 128), (y, x)
    tag = out[66:80, 50:70].reshape(-1, 3)  # the label tag sits above the box, filled
    assert (tag == colour).all(-1).mean() > 0.5


def test_tag_inside_when_box_touches_top_and_right_edges() -> None:
    image = np.zeros((100, 100, 3), np.uint8)
    out = np.asarray(draw_detections(image, _det([[80, 0, 100, 40]], [0.5], [0]), ["a long class name"], font_size=12))
    tag_rows = np.flatnonzero((out == PALETTE[0]).all(-1).sum(1) > 30)  # rows wider than the box: the tag
    assert tag_rows.min() == 0 and tag_rows.max() < 20  # inside the image, at the top of the box
    tag_cols = np.flatnonzero((out[:15] == PALETTE[0]).all(-1).any(0))
    assert tag_cols.max() == 99 and tag_cols.min() < 80  # shifted left to stay inside


def test_threshold_names_and_untouched_input() -> None:
    image = Image.fromarray(np.full((64, 64, 3), 50, np.uint8))
    before = np.asarray(image).copy()
    det = _det([[5, 20, 30, 40], [10, 30, 60, 60]], [0.2, 0.8], [0, 1], names=["cat", "dog"])
    only_dog = np.asarray(draw_detections(image, det, score_threshold=0.5))
    assert not (only_dog == PALETTE[0]).all(-1).any() and (only_dog == PALETTE[1]).all(-1).any()
    np.testing.assert_array_equal(np.asarray(image), before)  # drawn on a copy
    none = draw_detections(image, det, score_threshold=0.9)
    np.testing.assert_array_equal(np.asarray(none), before)
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    np.testing.assert_array_equal(np.asarray(draw_detections(image, empty)), before)
    with pytest.raises(ValueError, match="lengths differ"):
        draw_detections(image, _det([[0, 0, 1, 1]], [0.5, 0.6], [0, 0]))


def test_inputs_path_tensor_and_exif(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 80x40 (WxH), displayed 40x80
    Image.fromarray(np.zeros((40, 80, 3), np.uint8)).save(tmp_path / "r.jpg", exif=exif)
    out = draw_detections(tmp_path / "r.jpg", _det([[2, 50, 30, 78]], [0.7], [3]))
    assert out.size == (40, 80)
    chw = draw_detections(torch.rand(3, 30, 50), _det([[1, 1, 20, 20]], [0.7], [3]))
    assert chw.size == (50, 30) and chw.mode == "RGB"


def test_palette_and_text_contrast() -> None:
    assert len(set(PALETTE)) == len(PALETTE) and class_colour(len(PALETTE) + 4) == PALETTE[4]
    assert _text_colour((255, 255, 0)) == (0, 0, 0) and _text_colour((0, 24, 236)) == (255, 255, 255)
