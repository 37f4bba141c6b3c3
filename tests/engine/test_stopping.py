"""Stopping early: the time budget and signals (engine/stopping.py), and a resumed run whose
budget is already spent."""

from __future__ import annotations

import signal
from pathlib import Path

import torch

from efficientdet.engine.checkpoint import load_checkpoint
from efficientdet.engine.distributed import DistInfo
from efficientdet.engine.stopping import StopSignals
from efficientdet.engine.trainer import Trainer

ONE_PROCESS = DistInfo(rank=0, local_rank=0, world_size=1)


def test_budget_share_and_signals_in_one_process() -> None:
    lines: list[str] = []
    stops = StopSignals(ONE_PROCESS, torch.device("cpu"), budget_minutes=2, log=lines.append)
    stops.agree(elapsed_s=60.0)
    assert stops.budget_used == 0.5 and not stops.out_of_time
    stops.agree(elapsed_s=120.0)
    assert stops.budget_used == 1.0 and stops.out_of_time
    before = signal.getsignal(signal.SIGTERM)
    with stops.handled():
        assert not stops.signalled
        signal.raise_signal(signal.SIGTERM)
        assert stops.signalled and stops.requested == "SIGTERM"  # one process: at once, no agree()
    assert signal.getsignal(signal.SIGTERM) is before  # the caller's handler is back
    assert lines == ["SIGTERM received: finishing this step, saving a checkpoint"]
    no_budget = StopSignals(ONE_PROCESS, torch.device("cpu"), budget_minutes=None, log=lines.append)
    no_budget.agree(elapsed_s=1e9)
    assert not no_budget.out_of_time


def test_resume_of_a_run_that_spent_its_budget_trains_no_further_step(
    tiny_dataset: Path, tmp_path: Path, make_config
) -> None:
    # the budget share was only computed after a step: a resumed run whose budget was spent
    # (killed after its last save) trained one more step before it noticed
    cfg = make_config(tiny_dataset, tmp_path, epochs=50, time_budget_minutes=0.001)
    first = Trainer(cfg, progress=False)
    assert first.fit() == "time"
    steps = first.step
    again = Trainer(cfg.replace(resume=True), progress=False)
    assert again.fit() == "time"
    assert again.step == load_checkpoint(tmp_path / "last.ckpt")["step"] == steps
