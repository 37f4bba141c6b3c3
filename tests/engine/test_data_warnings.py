"""Data problems met while training: warned once per run, counted per epoch, one line in the CLI.

A truncated JPEG fails to decode every epoch, in a DataLoader worker (another process); the
run must still show its warning once, not once per epoch.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest

from efficientdet.cli import main
from efficientdet.data.records import DataIssue
from efficientdet.engine.trainer import Trainer


@pytest.fixture(scope="module")
def broken_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """8 synthetic images, the first one truncated: (annotation file, the broken image)."""
    from efficientdet.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("broken")
    ann = make_synthetic_dataset(root, num_images=8, image_size=(128, 128), seed=3, max_objects=2)
    first = json.loads(ann.read_text())["images"][0]["file_name"]
    broken = Path(ann.parent, first).resolve()
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 3])
    return ann, broken


def test_a_broken_image_is_warned_once_per_run_and_counted_each_epoch(
    broken_dataset: tuple[Path, Path], tmp_path: Path, make_config: Any
) -> None:
    ann, broken = broken_dataset
    lines: list[str] = []
    # batches of 4: the one with the broken image still has 3 (BN of a 1x1 map needs 2)
    cfg = make_config(ann, tmp_path, epochs=3, batch_size=4, **{"data.workers": 1})  # a worker process decodes
    trainer = Trainer(cfg, log=lines.append, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert trainer.fit() == "done"
    issues = [str(w.message) for w in caught if issubclass(w.category, DataIssue)]
    assert len(issues) == 1, issues  # 3 epochs, 1 worker process per epoch: one warning
    assert issues[0].startswith(f"{broken}: record image_id=") and "sample skipped" in issues[0]
    assert trainer.skipped_images == 3
    summaries = [line for line in lines if line.startswith("epoch ")]
    assert summaries == [f"epoch {e}: 1 unreadable images skipped" for e in (1, 2, 3)]


def test_cli_train_prints_data_warnings_as_one_line_each(
    broken_dataset: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ann, broken = broken_dataset
    args = {
        "model": "efficientdet_lite0", "pretrained_backbone": False, "image_size": 128, "device": "cpu",
        "data.train": str(ann), "data.workers": 0, "batch_size": 4, "epochs": 2, "eval_every": 0,
        "log_every": 1, "output": str(tmp_path), "optim.lr": 0.01,
    }  # fmt: skip
    assert main(["train", "--no-progress", *(f"{k}={v}" for k, v in args.items())]) == 0
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    warned = [line for line in err if "warning" in line]
    assert len(warned) == 1, err
    assert warned[0].startswith(f"efficientdet train: warning: {broken}: record image_id=")
    assert not any("warnings.warn" in line or "DataIssue" in line for line in err), err  # no source lines
    assert "skipped: 2 unreadable images, 0 non-finite steps, 0 empty batches" in captured.out


def test_time_budget_progress_shows_the_budget_not_the_epoch_count(
    tmp_path: Path, tiny_dataset: Path, make_config: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = make_config(tiny_dataset, tmp_path, epochs=1000, max_steps=2, time_budget_minutes=5)
    assert Trainer(cfg, progress=True).fit() == "max_steps"
    err = capsys.readouterr().err
    assert "min of the time budget" in err and "/5 min" in err, err
    assert "/1000" not in err, err


def test_training_data_without_objects_is_warned_about(
    tiny_dataset: Path, tmp_path: Path, make_config: Any
) -> None:
    """Every label empty (or lost): training would run for hours on background only; say so first."""
    data = json.loads(tiny_dataset.read_text())
    data["annotations"] = []
    empty = tiny_dataset.parent / "no_objects.json"
    empty.write_text(json.dumps(data))
    lines: list[str] = []
    Trainer(make_config(empty, tmp_path, max_steps=1), log=lines.append, progress=False)
    assert f"warning: {empty}: no objects in its 8 training images; nothing to learn" in lines
    lines.clear()
    Trainer(make_config(tiny_dataset, tmp_path / "ok", max_steps=1), log=lines.append, progress=False)
    assert not any("no objects" in line for line in lines)
