"""Shared fixtures for training tests: a tiny synthetic dataset and a tiny-run config."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from efficientdet.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic")
    return make_synthetic_dataset(root, num_images=8, image_size=(128, 128), seed=3, max_objects=2)


def tiny_config(data: Path, output: Path, **overrides: Any):
    """Lite0 at 128x128 with random init: a CPU step takes a fraction of a second."""
    from efficientdet.engine.config import load_train_config

    base: dict[str, Any] = {
        "model": "efficientdet_lite0",
        "pretrained_backbone": False,
        "image_size": 128,
        "data.train": str(data),
        "data.workers": 0,
        "batch_size": 2,
        "epochs": 3,
        "eval_every": 0,
        "output": str(output),
        "log_every": 1,
        "deterministic": True,
        "optim.lr": 0.01,
        "optim.warmup_epochs": 0.5,
    }
    base.update(overrides)
    return load_train_config(None, base)


@pytest.fixture
def make_config():
    """``make_config(data, output, **overrides)`` -> TrainConfig for a tiny CPU run."""
    return tiny_config
