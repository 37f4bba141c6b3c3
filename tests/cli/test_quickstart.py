"""``efficientdet quickstart``, the README's main job, end to end on a tiny budget: every step
runs offline and leaves what the README promises (data, weights, COCO metrics, drawings)."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from efficientdet import create_model
from efficientdet.cli import main
from efficientdet.data.formats import read_coco
from efficientdet.engine.trainer import Trainer

TINY = ["--minutes", "0.05", "--images", "10", "--image-size", "128", "--no-progress"]


def test_quickstart_runs_every_step_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "qs"
    args = ["quickstart", "--out", str(out), "--minutes", "0.05", "--images", "10", "--image-size", "128"]
    (out / "train").mkdir(parents=True)
    (out / "train" / "last.ckpt").write_bytes(b"an earlier quickstart")  # a rerun starts over
    (out / ".quickstart").write_text("an earlier quickstart's folder")
    (out / "data" / "images").mkdir(parents=True)
    (out / "data" / "images" / "000099.jpg").write_bytes(b"a stale image of a larger earlier run")
    (out / "data" / "val.json").write_text("{}")
    (out / "my_predictions").mkdir()  # what the user made there (as "done" suggests) stays
    (out / "my_predictions" / "mine.jpg").write_bytes(b"user's")
    assert main([*args, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    for step in ("[1/4]", "[2/4]", "[3/4]", "[4/4]", "done in"):
        assert step in printed

    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_steps"] >= 1 and 0.0 <= summary["AP"] <= 1.0 and 0.0 <= summary["AP50"] <= 1.0
    weights = Path(summary["weights"])
    assert weights == out / "train" / "last.safetensors" and weights.is_file()
    model = create_model(weights=weights)  # a checkpoint that loads by itself: its config travels with it
    assert model.config is not None and model.config.name == "efficientdet_lite0"
    assert model.config.image_size == (128, 128)

    assert not (out / "data" / "images" / "000099.jpg").exists()
    assert (out / "my_predictions" / "mine.jpg").read_bytes() == b"user's"
    train, val = read_coco(out / "data" / "train.json"), read_coco(out / "data" / "val.json")
    assert len(train.records) + len(val.records) == 10 and len(val.records) == 2  # val_fraction 0.2
    assert model.class_names == list(val.class_names)
    drawings = sorted(p.name for p in (out / "predictions").iterdir())
    assert drawings == sorted(f"{r.image_path.stem}.jpg" for r in val.records)
    for name in drawings:
        with Image.open(out / "predictions" / name) as image:
            assert image.format == "JPEG" and image.size == (128, 128)
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert metrics["stats"]["AP"] == pytest.approx(summary["AP"])  # the summary reports the evaluation's numbers
    assert (out / "eval" / "detections_coco.json").is_file() and (out / "eval" / "pr_curve.png").is_file()


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--images", "2"], "--images 2: need at least 3"),  # no validation split: "val.json not found" after training
     (["--images", "1"], "--images 1: need at least 3"),  # one training image: a BatchNorm traceback-like line
     (["--image-size", "100"], "--image-size 100: must be a multiple of 32"),
     (["--minutes", "0"], "--minutes 0.0: must be > 0"),
     (["--seed", "-1"], "--seed -1: must be >= 0")],  # was "expected non-negative integer", after step 1 began
)  # fmt: skip
def test_bad_flags_are_one_error_naming_the_flag_before_any_work(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "qs"
    assert main(["quickstart", "--out", str(out), *TINY, *flags]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"efficientdet quickstart: error: {message}")
    assert "[1/4]" not in captured.out and not out.exists()


def test_a_folder_of_other_files_is_refused_and_kept(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """quickstart clears its own parts (``train/``, ``data/``, ...) to start over: in a folder it
    did not make (a dataset folder with a ``train/``) it used to delete them."""
    dataset = tmp_path / "roboflow_export"
    (dataset / "train").mkdir(parents=True)
    (dataset / "train" / "labels.txt").write_text("the user's data")
    assert main(["quickstart", "--out", str(dataset), *TINY]) == 2
    assert "--out " + str(dataset) + ": a folder of other files" in capsys.readouterr().err
    assert (dataset / "train" / "labels.txt").read_text() == "the user's data"
    assert sorted(p.name for p in dataset.iterdir()) == ["train"]


@pytest.mark.parametrize("where", ["a_file", "a_file/sub"])
def test_unwritable_out_is_one_error(where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a_file").write_text("x")  # a file where the folder should be: mkdir fails (as read-only would)
    assert main(["quickstart", "--out", str(tmp_path / where), *TINY]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"efficientdet quickstart: error: --out {tmp_path / where}") and "Traceback" not in err


def test_ctrl_c_in_training_stops_the_quickstart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C saves and stops training, then stops the quickstart (exit 130), as ``train`` does;
    it used to go on evaluating and drawing and end with "done", exit 0."""
    original_fit = Trainer.fit

    def fit_interrupted_after_one_step(self: Trainer, *args: Any, **kwargs: Any) -> str:
        original_step = self.stepper.optimizer_step

        def step_then_interrupt(time_fraction: float | None = None) -> None:
            original_step(time_fraction)
            signal.raise_signal(signal.SIGINT)  # as if the user pressed Ctrl-C

        self.stepper.optimizer_step = step_then_interrupt  # type: ignore[method-assign]
        return original_fit(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "fit", fit_interrupted_after_one_step)
    out = tmp_path / "qs"
    assert main(["quickstart", "--out", str(out), *TINY]) == 130
    captured = capsys.readouterr()
    assert "[3/4]" not in captured.out and "done in" not in captured.out
    assert f"interrupted after 1 steps; weights so far: {out / 'train' / 'last.safetensors'}" in captured.err
    assert (out / "train" / "last.safetensors").is_file() and not (out / "eval").exists()
