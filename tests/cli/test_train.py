"""``efficientdet train`` from the command line: overrides anywhere on the line, the refused
output folder of another run, and the weights it names at the end."""

from __future__ import annotations

from pathlib import Path

import pytest

from efficientdet.cli import main
from efficientdet.data.synthetic import make_synthetic_dataset
from efficientdet.engine.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train_cli")
    return make_synthetic_dataset(root, num_images=6, image_size=(128, 128), seed=3, max_objects=2, val_fraction=0.34)


def _args(data: Path, out: Path) -> list[str]:
    return [
        "train", "--data", str(data), "--val", str(data.parent / "val.json"), "--model", "efficientdet_lite0",
        "--output", str(out), "--no-progress", "image_size=128", "pretrained_backbone=false", "batch_size=2",
        "data.workers=0", "log_every=1",
    ]  # fmt: skip


def test_train_names_weights_that_exist_and_takes_overrides_after_flags(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    # no validation (eval_every=0): there is no best.safetensors (the CLI named it)
    assert main([*_args(data, out), "max_steps=1", "eval_every=0"]) == 0
    printed = capsys.readouterr().out
    assert not (out / "best.safetensors").exists()
    assert f"weights: {out / 'last.safetensors'} (EMA; no best.safetensors: no validation has run)" in printed
    # overrides after --resume used to be "unrecognized arguments"
    assert main([*_args(data, out), "--resume", "max_steps=2", "optim.lr=0.02"]) == 0
    printed = capsys.readouterr().out
    state = load_checkpoint(out / "last.ckpt")
    assert state["step"] == 2 and state["config"]["optim"]["lr"] == 0.02 and state["config"]["max_steps"] == 2
    assert "resumed from" in printed
    with pytest.raises(SystemExit):
        main([*_args(data, out), "--resume", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_a_new_run_over_another_is_one_error_line(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main([*_args(data, out), "max_steps=1", "eval_every=0"]) == 0
    before = (out / "last.ckpt").read_bytes()
    capsys.readouterr()
    assert main([*_args(data, out), "max_steps=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"efficientdet train: error: {out} already holds a training run (last.ckpt, last.safetensors): pass "
        "--resume (resume=true) to continue it, or choose another --output for a new run (or delete the folder first)"
    ]
    assert (out / "last.ckpt").read_bytes() == before


def test_an_output_that_is_a_file_is_one_error_line(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    assert main([*_args(data, out), "max_steps=1"]) == 2  # was a FileExistsError traceback
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"efficientdet train: error: {out}: cannot create the output folder (File exists)"]
    assert out.read_text() == "mine"


def test_resume_with_only_the_output_folder_continues_the_run(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # usage.md: `efficientdet train --output runs/mine --resume`; it said "no training data"
    out = tmp_path / "run"
    assert main([*_args(data, out), "max_steps=1", "optim.lr=0.02", "epochs=7"]) == 0
    capsys.readouterr()
    assert main(["train", "--output", str(out), "--resume", "--no-progress", "max_steps=2"]) == 0
    printed = capsys.readouterr().out
    assert "resumed from" in printed and "settings changed" not in printed
    config = load_checkpoint(out / "last.ckpt")["config"]
    assert load_checkpoint(out / "last.ckpt")["step"] == 2
    assert (config["model"], config["image_size"], config["data"]["train"]) == ("efficientdet_lite0", 128, str(data))
    assert (config["optim"]["lr"], config["epochs"], config["max_steps"]) == (0.02, 7, 2)


def test_a_flag_and_an_override_of_the_same_setting_must_agree(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--model efficientdet_lite0 ... model=efficientdet_d0``: the flag used to win silently
    (the override ignored); the same value twice is fine."""
    out = tmp_path / "run"
    assert main([*_args(data, out), "model=efficientdet_d0", "max_steps=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "efficientdet train: error: --model efficientdet_lite0 and model=efficientdet_d0 disagree; give one of them"
    ]
    assert not out.exists()
    assert main([*_args(data, out), "model=efficientdet_lite0", "max_steps=1", "eval_every=0"]) == 0


def test_a_diverged_run_is_one_line_and_exit_3(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Too many non-finite losses in a row (engine tests make them): the trainer's message on one
    line, exit 3, as docs/usage.md says, so a script can tell it from a usage error (2)."""
    from efficientdet.engine.trainer import Trainer, TrainingDiverged

    def diverge(self: Trainer) -> str:
        raise TrainingDiverged("5 non-finite losses in a row; last.ckpt holds the run")

    monkeypatch.setattr(Trainer, "fit", diverge)
    assert main([*_args(data, tmp_path / "run"), "max_steps=1"]) == 3
    assert capsys.readouterr().err == "efficientdet train: 5 non-finite losses in a row; last.ckpt holds the run\n"
