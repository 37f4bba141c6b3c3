"""Training with the augment.* options: the loader uses AugmentedDataset and close_mosaic reaches it."""

from __future__ import annotations

from pathlib import Path

from efficientdet.data.augmented import AugmentedDataset
from efficientdet.engine.trainer import Trainer


def test_training_runs_with_every_augmentation(tiny_dataset: Path, tmp_path: Path, make_config) -> None:
    cfg = make_config(
        tiny_dataset, tmp_path, epochs=2, max_steps=5,
        **{"augment.policy": "v0", "augment.grid_mask": True, "augment.mosaic": 1.0, "augment.mixup": 0.5,
           "augment.close_mosaic": 1},
    )  # fmt: skip
    trainer = Trainer(cfg, progress=False)
    dataset = trainer.seeded.base
    assert isinstance(dataset, AugmentedDataset)
    assert trainer.fit() in ("done", "max_steps")
    assert trainer.step == 5 and trainer.nonfinite_steps == 0
    assert dataset.epoch == 1 and not dataset.mixing  # the last epoch ran without mosaic / mixup
