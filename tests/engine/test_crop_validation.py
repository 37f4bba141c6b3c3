"""A model trained on crops (``data.crop_size``) is validated on tiles of that size."""

from __future__ import annotations

from pathlib import Path

import pytest

from efficientdet.data.formats import read_dataset
from efficientdet.engine.setup import validation_tile
from efficientdet.engine.trainer import Trainer


def test_validation_tile_rules(tiny_dataset: Path) -> None:
    index = read_dataset(tiny_dataset)  # 128 x 128 images
    assert validation_tile(None, index) == (None, None)
    tile, note = validation_tile(64, index)
    assert tile == 64 and note == "validation: sliced inference on 64 x 64 tiles + the whole image (data.crop_size)"
    tile, note = validation_tile(48, index)
    assert tile is None and note is not None and note.endswith("tiles must be a multiple of 32")
    tile, note = validation_tile(160, index)
    assert tile is None and note is not None and "is smaller than a tile" in note


def test_crop_training_validates_sliced(tiny_dataset: Path, tmp_path: Path, make_config, monkeypatch) -> None:
    from efficientdet.inference import sliced

    tiles: list[int] = []
    original = sliced.SlicedDetector.__init__

    def spy(self, detector, tile, *args, **kw) -> None:  # type: ignore[no-untyped-def]
        tiles.append(tile)
        original(self, detector, tile, *args, **kw)

    monkeypatch.setattr(sliced.SlicedDetector, "__init__", spy)
    lines: list[str] = []
    cfg = make_config(tiny_dataset, tmp_path, epochs=1, eval_every=1, **{"data.val": str(tiny_dataset), "data.crop_size": 64})
    trainer = Trainer(cfg, log=lines.append, progress=False)
    assert trainer.fit() == "done"
    assert tiles == [64]  # the one validation ran on tiles
    assert "validation: sliced inference on 64 x 64 tiles + the whole image (data.crop_size)" in lines
    assert any(line.startswith("epoch 1: AP ") for line in lines)
    assert (tmp_path / "best.safetensors").exists()


@pytest.mark.parametrize("crop", [48, 160])
def test_crop_training_falls_back_to_whole_images_with_a_note(tiny_dataset: Path, tmp_path: Path, make_config, crop: int) -> None:
    lines: list[str] = []
    cfg = make_config(tiny_dataset, tmp_path, epochs=1, eval_every=0, **{"data.val": str(tiny_dataset), "data.crop_size": crop})
    trainer = Trainer(cfg, log=lines.append, progress=False)
    assert trainer.val_tile is None
    assert any(line.startswith(f"validation runs on whole images, not sliced at data.crop_size={crop}") for line in lines)
