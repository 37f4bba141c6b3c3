"""The training-start anchor check (one warning line, config untouched), ``anchors.*``
overrides reaching the model, and sliced training (``data.crop_size``) running."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from efficientdet.data.formats import read_dataset
from efficientdet.data.synthetic import make_synthetic_dataset
from efficientdet.engine.anchor_check import anchor_warning
from efficientdet.engine.trainer import Trainer
from efficientdet.variants import get_config


@pytest.fixture(scope="module")
def small_objects(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 images of 256x384 with 6-10 objects of 8-16 px (Lite0 at 128: 2.7-5.3 px after the resize)."""
    return make_synthetic_dataset(tmp_path_factory.mktemp("small"), num_images=4, image_size=(256, 384),
                                  object_size=(8, 16), min_objects=6, max_objects=10, seed=1)  # fmt: skip


def test_low_recall_warns_once_with_numbers_and_overrides(small_objects: Path, tmp_path: Path, make_config: Any) -> None:
    cfg = make_config(small_objects, tmp_path, max_steps=1)
    model_config = get_config("efficientdet_lite0").replace(image_size=128)
    line = anchor_warning(cfg, read_dataset(small_objects), model_config)
    assert line is not None and line.startswith("anchors match only 0.") and "below anchors.min_recall=0.95" in line
    assert "anchors.anchor_scale=" in line
    lines: list[str] = []
    trainer = Trainer(cfg, log=lines.append, progress=False)
    assert [x for x in lines if "anchors match only" in x] == [f"warning: {line}"]
    assert trainer.model_config.anchors == model_config.anchors  # never changed silently
    off = make_config(small_objects, tmp_path, **{"anchors.check": False})
    assert anchor_warning(off, read_dataset(small_objects), model_config) is None


def test_overrides_and_sliced_training(small_objects: Path, tmp_path: Path, make_config: Any) -> None:
    overrides = {"anchors.anchor_scale": 1.0, "anchors.num_scales": 2,
                 "anchors.aspect_ratios": [[1.0, 1.0], [1.4, 0.7]], "data.crop_size": 128}  # fmt: skip
    cfg = make_config(small_objects, tmp_path, max_steps=2, **overrides)
    lines: list[str] = []
    trainer = Trainer(cfg, log=lines.append, progress=False)
    anchors = trainer.model_config.anchors
    assert (anchors.anchor_scale, anchors.num_scales, anchors.aspect_ratios) == (1.0, 2, ((1.0, 1.0), (1.4, 0.7)))
    trainer.fit()
    assert trainer.step == 2  # two steps on 128x128 crops
