"""``grad_checkpointing=true`` reaches the model the Trainer trains, and trains the same."""

from __future__ import annotations

from pathlib import Path

import torch

from efficientdet.engine.trainer import Trainer


def test_training_with_checkpointing_matches_plain(tiny_dataset: Path, tmp_path: Path, make_config) -> None:
    runs = {}
    for flag in (False, True):
        cfg = make_config(tiny_dataset, tmp_path / str(flag), grad_checkpointing=flag, max_steps=3,
                          data_parallel_threads=1, device="cpu")  # fmt: skip
        trainer = Trainer(cfg, progress=False)
        assert trainer.model.feature_net.grad_checkpointing is flag
        assert ("forward" in vars(trainer.model.backbone.blocks[0])) is flag
        trainer.fit()
        runs[flag] = (trainer.history, trainer.model.state_dict())
    (h0, s0), (h1, s1) = runs[False], runs[True]
    assert len(h0) == len(h1) == 3
    torch.testing.assert_close(torch.tensor(h1), torch.tensor(h0), atol=1e-5, rtol=0)
    for key, value in s0.items():  # weights and BN statistics after 3 steps
        torch.testing.assert_close(s1[key].float(), value.float(), atol=1e-4, rtol=0, msg=key)
