"""Two gloo processes on the CPU, started by torchrun, train one and the same model."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

SCRIPT = textwrap.dedent(
    """
    import os, sys, torch
    from efficientdet.engine.config import load_train_config
    from efficientdet.engine.trainer import Trainer
    from efficientdet.engine.distributed import cleanup

    data, out = sys.argv[1], sys.argv[2]
    cfg = load_train_config(None, {
        "model": "efficientdet_lite0", "pretrained_backbone": False, "image_size": 128,
        "data.train": data, "data.workers": 0, "batch_size": 2, "epochs": 1, "eval_every": 0,
        "output": out, "deterministic": True, "optim.lr": 0.01, "device": "cpu",
    })
    trainer = Trainer(cfg, progress=False)
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    rank = trainer.dist.rank
    params = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    torch.save({"start": start, "end": params, "step": trainer.step,
                "world": trainer.dist.world_size, "samples": len(trainer.sampler)},
               os.path.join(out, f"rank{rank}.pt"))
    cleanup(trainer.dist)
    """
)


def test_two_gloo_processes_train_the_same_model(tiny_dataset: Path, tmp_path: Path) -> None:
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), str(tiny_dataset), str(tmp_path / "out")]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "out" / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "out" / "rank1.pt", weights_only=True)
    assert r0["world"] == r1["world"] == 2
    # 8 images split over 2 ranks: 4 each, batch 2 -> 2 optimiser steps per epoch
    assert r0["samples"] == r1["samples"] == 4 and r0["step"] == r1["step"] == 2
    for key, start in r0["start"].items():
        assert torch.equal(start, r1["start"][key]), key  # same initial weights
    # Parameters: gradients are averaged, so every rank holds the same model. (BN running
    # statistics are per rank between forwards; DDP broadcasts rank 0's, which is what is saved.)
    changed = 0
    for key, end in r0["end"].items():
        assert torch.allclose(end.float(), r1["end"][key].float(), atol=1e-6), key  # same after steps
        changed += int(not torch.equal(end, r0["start"][key]))
    assert changed > 50  # and they did train
    assert (tmp_path / "out" / "last.ckpt").exists()  # written by rank 0 only


SIGNAL_ONE_RANK = textwrap.dedent(
    """
    import json, os, signal, sys
    from efficientdet.engine.config import load_train_config
    from efficientdet.engine.trainer import Trainer
    from efficientdet.engine.distributed import cleanup

    data, out = sys.argv[1], sys.argv[2]
    cfg = load_train_config(None, {
        "model": "efficientdet_lite0", "pretrained_backbone": False, "image_size": 128,
        "data.train": data, "data.workers": 0, "batch_size": 2, "epochs": 3, "eval_every": 0,
        "output": out, "optim.lr": 0.01, "device": "cpu",
    })
    trainer = Trainer(cfg, progress=False)
    original = trainer.stepper.optimizer_step

    def step_then_signal(time_fraction=None):
        original(time_fraction)
        if trainer.dist.rank == 1 and trainer.step == 3:
            signal.raise_signal(signal.SIGTERM)  # a scheduler reached this rank first

    trainer.stepper.optimizer_step = step_then_signal
    reason = trainer.fit()
    with open(os.path.join(out, f"rank{trainer.dist.rank}.json"), "w") as f:
        json.dump({"reason": reason, "step": trainer.step}, f)
    cleanup(trainer.dist)
    """
)


def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(tiny_dataset: Path, tmp_path: Path) -> None:
    # rank 1 used to stop alone: rank 0 failed in the next all-reduce and no checkpoint was written
    import json

    from efficientdet.engine.checkpoint import load_checkpoint

    script = tmp_path / "ddp_signal.py"
    script.write_text(SIGNAL_ONE_RANK)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), str(tiny_dataset), str(out)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks == [{"reason": "signal", "step": 3}] * 2
    assert load_checkpoint(out / "last.ckpt")["step"] == 3  # rank 0 saved where both stopped
