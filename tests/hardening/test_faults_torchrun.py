"""torchrun --max-restarts: a worker dies, torchrun restarts the group, the run resumes by itself.

Two gloo processes on the CPU run ``efficientdet train`` through a wrapper script written by the
test: it patches ``TrainStep.optimizer_step`` so that rank 1 calls ``os._exit(1)`` right after
optimiser step ``KILL_AT`` in the first attempt only (``TORCHELASTIC_RESTART_COUNT == "0"``).
No fault hook lives in the library. The config does not set ``resume``: restarted workers
resume from ``last.ckpt`` on their own.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from efficientdet.engine.checkpoint import load_checkpoint
from efficientdet.weights.io import read_weights

KILL_AT, EVERY, MAX_STEPS = 3, 2, 5  # dies after step 3; periodic checkpoints at 2 and 4

WRAPPER = textwrap.dedent(
    """\
    import os, sys
    from efficientdet.engine.step import TrainStep

    kill_at = int(os.environ["TEST_KILL_AT_STEP"])
    original = TrainStep.optimizer_step

    def dying_step(self, time_fraction=None):
        original(self, time_fraction)
        step = self.state.step
        if step == kill_at and self.dist.rank == 1 and os.environ["TORCHELASTIC_RESTART_COUNT"] == "0":
            print(f"test fault: rank 1 exits at step {step}", flush=True)
            os._exit(1)  # like a crash or an OOM kill: no cleanup, no checkpoint

    TrainStep.optimizer_step = dying_step
    from efficientdet.cli import main
    raise SystemExit(main(["train", "--no-progress", *sys.argv[1:]]))
    """
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from efficientdet.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("torchrun_data")
    return make_synthetic_dataset(root, num_images=8, image_size=(128, 128), seed=3, max_objects=2)


def test_worker_death_is_restarted_and_resumes_from_last_checkpoint(dataset: Path, tmp_path: Path) -> None:
    wrapper, out = tmp_path / "dying_train.py", tmp_path / "out"
    wrapper.write_text(WRAPPER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TEST_KILL_AT_STEP": str(KILL_AT)}  # fmt: skip
    train_args = [
        "model=efficientdet_lite0", "pretrained_backbone=false", "image_size=128", "device=cpu",
        f"data.train={dataset}", "data.workers=0", "batch_size=2", "epochs=10", f"max_steps={MAX_STEPS}",
        "eval_every=0", "log_every=1", "deterministic=true", "optim.lr=0.01",
        f"checkpoint_every_steps={EVERY}", f"output={out}",
    ]  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "--max-restarts=1", "--monitor-interval=0.5", str(wrapper), *train_args]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    (tmp_path / "torchrun.log").write_text(log)
    assert proc.returncode == 0, log[-4000:]

    # first attempt: rank 1 died after step 3
    assert f"test fault: rank 1 exits at step {KILL_AT}" in log
    assert log.count("test fault") == 1  # the restarted group did not die again
    assert "torchrun restart 1: resuming automatically" in log
    resumed = re.findall(r"resumed from (\S+): epoch (\d+), step (\d+)", log)
    assert len(resumed) == 1, log[-4000:]  # printed by rank 0 of the restarted group
    path, epoch, step = resumed[0]
    assert path == str(out / "last.ckpt")
    # Either the periodic checkpoint of step 2, or, when torchrun's SIGTERM reached rank 0 after
    # step 3 had completed on both ranks, the checkpoint rank 0 writes on SIGTERM (step 3).
    # 2 ranks x batch 2 over 8 images: 2 steps per epoch.
    last_periodic = (KILL_AT // EVERY) * EVERY
    assert (int(step), int(epoch)) in {(last_periodic, 0), (KILL_AT, 1)}, log[-4000:]
    if int(step) == KILL_AT:
        assert "SIGTERM received: finishing this step, saving a checkpoint" in log
    assert f"stopped: max_steps after {MAX_STEPS} steps" in log

    state = load_checkpoint(out / "last.ckpt")
    assert state["step"] == MAX_STEPS and len(state["history"]) == MAX_STEPS
    assert state["ema"]["updates"] == MAX_STEPS
    assert read_weights(out / "last.safetensors")[1] is not None
    with (out / "metrics.csv").open(newline="") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r["kind"] == "train"]
    assert steps == list(range(1, MAX_STEPS + 1))  # step 3's row of the first attempt not doubled
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
