"""SIGKILL a training run at random moments, resume it each time: the result is bit-identical.

``efficientdet train ... resume=auto checkpoint_every_steps=1`` runs as a subprocess. Each try is
killed (SIGKILL: no handler runs, no cleanup) a seeded random fraction of a step after a new
checkpoint appeared, so kills land in the forward pass, the backward pass, or in the middle of
writing ``last.ckpt`` / ``last.safetensors``. After every kill each ``*.ckpt`` and
``*.safetensors`` in the output folder must load, and the only other files may be the hidden
temp files (``.last.ckpt.XXXX.tmp``) of the interrupted write, which no ``*.ckpt`` glob matches.
The same command then resumes. At the end the weights, EMA, optimiser state, loss history and
``metrics.csv`` equal those of an uninterrupted run of the same command (run in parallel).
"""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from efficientdet.engine.checkpoint import load_checkpoint
from efficientdet.fs import WRITER_TEMP_GLOB
from efficientdet.weights.io import read_weights

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
TIMEOUT_S = 300  # per wait; a hung run fails the test instead of blocking CI


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from efficientdet.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("kill_data")
    return make_synthetic_dataset(root, num_images=8, image_size=(128, 128), seed=3, max_objects=2)


def train_command(data: Path, output: Path, max_steps: int) -> list[str]:
    """Lite0 at 128 px, 8 images, batch 2 (4 steps per epoch), a checkpoint after every step."""
    return [
        sys.executable, "-m", "efficientdet", "train", "--no-progress",
        "model=efficientdet_lite0", "pretrained_backbone=false", "image_size=128", "device=cpu",
        f"data.train={data}", "data.workers=0", "data.hflip=0.5", "data.scale_range=[0.5,1.5]",
        "batch_size=2", "epochs=10", f"max_steps={max_steps}", "eval_every=0", "log_every=1",
        "deterministic=true", "optim.lr=0.01", "optim.warmup_epochs=0.5", "optim.ema_warmup_steps=4",
        "checkpoint_every_steps=1", "resume=auto", f"output={output}",
    ]  # fmt: skip


def _identity(path: Path) -> tuple[int, int] | None:
    """(inode, mtime) of ``path``: changes whenever ``os.replace`` puts a new file there."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def _wait_new_checkpoint(proc: subprocess.Popen, ckpt: Path, old: tuple[int, int] | None) -> float:
    """Block until ``ckpt`` is replaced by a new file; returns the time it was seen."""
    deadline = time.monotonic() + TIMEOUT_S
    while _identity(ckpt) in (old, None):
        assert proc.poll() is None, f"training exited ({proc.returncode}) before writing a new checkpoint"
        assert time.monotonic() < deadline, "no new checkpoint in time"
        time.sleep(0.02)
    return time.monotonic()


def assert_folder_consistent(output: Path) -> list[str]:
    """Every checkpoint/weights file loads; anything else is a known file or a hidden temp file.

    Returns the names of leftover temp files (evidence that a kill landed inside a save).
    """
    temps = []
    for path in output.iterdir():
        if path.suffix == ".ckpt":
            state = load_checkpoint(path)
            assert state["format"] == "efficientdet-train-1" and state["step"] >= 1, path
        elif path.suffix == ".safetensors":
            tensors, meta = read_weights(path)
            assert meta is not None and len(tensors) > 100, path
        elif path.name.endswith(".tmp") or path.match(WRITER_TEMP_GLOB):
            # a write cut short (ours, or safetensors' own temp file inside it): hidden, and
            # no glob for checkpoints can pick it up
            assert path.name.startswith("."), path
            assert path not in {*output.glob("*.ckpt"), *output.glob("*.safetensors")}
            temps.append(path.name)
        else:
            assert path.name in {"metrics.csv", "tensorboard", "training_curves.png", "config.yaml"}, path
    return temps


def train_with_kills(cmd: list[str], output: Path, kills: int, seed: int, log: Path) -> list[dict]:
    """Run ``cmd``, SIGKILL it ``kills`` times at seeded random moments, then let it finish."""
    rng = random.Random(seed)
    ckpt = output / "last.ckpt"
    events: list[dict] = []
    cycle = 2.0  # seconds per step + save; measured below from checkpoint times
    with log.open("w") as out:
        for attempt in range(kills):
            before = _identity(ckpt)
            resumed_from = load_checkpoint(ckpt)["step"] if before else 0
            proc = subprocess.Popen(cmd, env=ENV, stdout=out, stderr=subprocess.STDOUT)
            try:
                seen = _wait_new_checkpoint(proc, ckpt, before)
                if attempt == 0:  # measure how long one step + save takes here
                    cycle = _wait_new_checkpoint(proc, ckpt, _identity(ckpt)) - seen
                # a reader meanwhile (the run keeps writing) never sees a half-written file
                observed = load_checkpoint(ckpt)["step"]
                delay = rng.uniform(0.0, 1.0) * cycle
                time.sleep(delay)
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=TIMEOUT_S)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            assert proc.returncode == -signal.SIGKILL, f"try {attempt} ended by itself: max_steps too small"
            temps = assert_folder_consistent(output)
            killed_at = load_checkpoint(ckpt)["step"]
            assert killed_at >= max(observed, resumed_from + 1)  # every try made progress
            events.append({"resumed_from": resumed_from, "killed_after": killed_at, "delay_s": round(delay, 2),
                           "temp_files_left": temps})  # fmt: skip
        final = subprocess.run(cmd, env=ENV, stdout=out, stderr=subprocess.STDOUT, timeout=TIMEOUT_S)
    assert final.returncode == 0, log.read_text()[-3000:]
    print("kills:", events)  # shown with pytest -s: where the kills landed
    return events


def _metrics_rows(output: Path) -> list[list[str]]:
    """metrics.csv without the images/s column (wall-clock speed differs between runs)."""
    with (output / "metrics.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    col = rows[0].index("images_per_s")
    return [r[:col] + r[col + 1 :] for r in rows]


def assert_same_run(ref: Path, killed: Path, max_steps: int) -> None:
    a, b = load_checkpoint(ref / "last.ckpt"), load_checkpoint(killed / "last.ckpt")
    assert a["step"] == b["step"] == max_steps
    assert (a["epoch"], a["batch_in_epoch"]) == (b["epoch"], b["batch_in_epoch"])
    assert a["history"] == b["history"] and len(b["history"]) == max_steps  # exact float equality
    for part in ("model", "ema"):
        sa, sb = (a[part], b[part]) if part == "model" else (a[part]["module"], b[part]["module"])
        assert sa.keys() == sb.keys()
        for key in sa:
            assert torch.equal(sa[key], sb[key]), f"{part}.{key} differs"  # bitwise
    assert a["ema"]["updates"] == b["ema"]["updates"] == max_steps
    for key, state in a["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], b["optimizer"]["state"][key]["momentum_buffer"]), key
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == max_steps
    for rng in ("torch",):
        assert torch.equal(a["rng"][rng], b["rng"][rng])
    for name in ("last.safetensors", "best.safetensors"):
        ta, _ = read_weights(ref / name)
        tb, _ = read_weights(killed / name)
        assert all(torch.equal(ta[k], tb[k]) for k in ta), name
    rows_a, rows_b = _metrics_rows(ref), _metrics_rows(killed)
    assert len(rows_b) == max_steps + 1  # header + one row per step: replayed rows not duplicated
    assert rows_a == rows_b
    assert not [p for p in killed.iterdir() if p.name.endswith(".tmp") or p.match(WRITER_TEMP_GLOB)]  # cleaned up


def _run_scenario(dataset: Path, tmp_path: Path, kills: int, max_steps: int, seed: int) -> None:
    ref_out, killed_out = tmp_path / "uninterrupted", tmp_path / "killed"
    ref_log = (tmp_path / "reference.log").open("w")
    # the reference runs alongside the killed runs: both are single-threaded
    reference = subprocess.Popen(
        train_command(dataset, ref_out, max_steps), env=ENV, stdout=ref_log, stderr=subprocess.STDOUT
    )
    try:
        events = train_with_kills(
            train_command(dataset, killed_out, max_steps), killed_out, kills, seed, tmp_path / "killed.log"
        )
        assert reference.wait(timeout=TIMEOUT_S) == 0, (tmp_path / "reference.log").read_text()[-3000:]
    finally:
        if reference.poll() is None:
            reference.kill()
            reference.wait()
        ref_log.close()
    log = (tmp_path / "killed.log").read_text()
    assert log.count("resumed from") == kills, log[-3000:]
    for event in events:
        assert f"resumed from {killed_out / 'last.ckpt'}: epoch " in log
        assert f"step {event['killed_after']}" in log
    assert_same_run(ref_out, killed_out, max_steps)


def test_sigkill_twice_then_resume_equals_uninterrupted(dataset: Path, tmp_path: Path) -> None:
    _run_scenario(dataset, tmp_path, kills=2, max_steps=7, seed=11)


@pytest.mark.slow
def test_sigkill_five_times_across_epochs(dataset: Path, tmp_path: Path) -> None:
    # 4 steps per epoch: 16 steps cross three epoch boundaries, and kills land anywhere
    _run_scenario(dataset, tmp_path, kills=5, max_steps=16, seed=2024)


# --- the pieces that make a killed run resumable, checked directly (fast) -------------------
def test_metrics_rows_after_the_checkpoint_are_dropped(tmp_path: Path) -> None:
    from efficientdet.engine.logger import MetricsLogger

    logger = MetricsLogger(tmp_path, True, 0, 0)
    for step in range(1, 6):  # 4 steps per epoch: step 5 is in epoch 1
        logger.log("train", (step - 1) // 4, step, {"loss": float(step)})
    logger.log("val", 1, 4, {"AP": 0.5})  # validation after epoch 0 (epoch counter already 1)
    logger.close()
    with (tmp_path / "metrics.csv").open("a", newline="") as f:
        f.write("train,1,6,0.12")  # a kill in the middle of an append: no line end
    # resume from a checkpoint written inside epoch 0 at its last step (epoch 0, step 4): the
    # validation of epoch 1 and steps 5, 6 are replayed, so their rows go
    resumed = MetricsLogger(tmp_path, True, 4, 0)
    resumed.close()
    rows = _metrics_rows(tmp_path)
    assert resumed.dropped_rows == 3
    assert [(r[0], r[2]) for r in rows[1:]] == [("train", "1"), ("train", "2"), ("train", "3"), ("train", "4")]
    assert (tmp_path / "metrics.csv").read_bytes().count(b"\r\n") == 5  # csv's line ends kept
    # a new run (nothing to resume) starts an empty file
    assert MetricsLogger(tmp_path, True, 0, 0).dropped_rows == 4
    assert len(_metrics_rows(tmp_path)) == 1


def test_stale_temp_files_of_killed_saves_are_removed(tmp_path: Path) -> None:
    from efficientdet.engine.checkpoint import remove_stale_temp_files

    # .tmpsjw4HI: safetensors' own temp file, left by a kill inside its write (seen in this test)
    stale = [".last.ckpt.k2j_x9.tmp", ".best.ckpt.0a1b.tmp", ".last.safetensors.1f2e3d4c5b6a.tmp", ".tmpsjw4HI"]
    kept = ["last.ckpt", "notes.tmp", ".other.tmp", "last.ckpt.tmp", ".tmp_long_name", "tmpsjw4HI"]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"x")
    removed = remove_stale_temp_files(tmp_path)
    assert sorted(p.name for p in removed) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)
