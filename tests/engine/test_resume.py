"""Resume: N steps, stop, resume, M steps == N + M steps in one go (deterministic mode)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from efficientdet.engine.checkpoint import load_checkpoint
from efficientdet.engine.trainer import Trainer


@pytest.mark.parametrize(
    "threads, batch", [(1, 2), (2, 4)], ids=["one-thread", "thread-data-parallel"]
)  # 2 threads: shares of 2 images (the 1x1 top level at 128 px needs 2 per BN)
def test_resume_mid_epoch_equals_uninterrupted(
    tiny_dataset: Path, tmp_path: Path, make_config, threads: int, batch: int
) -> None:
    # 8 images -> 8 / batch steps per epoch, 3 epochs; stop 1 batch into epoch 2
    per_epoch = 8 // batch
    aug = {"data.hflip": 0.5, "data.scale_range": (0.5, 1.5), "data_parallel_threads": threads, "batch_size": batch}
    if threads > 1:
        aug["device"] = "cpu"  # thread workers are a CPU feature (a GPU machine runs the other case on CUDA)
    cfg = make_config(tiny_dataset, tmp_path / "full", **aug)
    full = Trainer(cfg, progress=False)
    assert (full.threads is not None) == (threads > 1)
    assert full.fit() == "done"

    cfg_a = make_config(tiny_dataset, tmp_path / "split", **aug)
    first = Trainer(cfg_a, progress=False)
    assert first.fit(stop_at_step=per_epoch + 1) == "stopped"  # mid-epoch: 1 batch into epoch 2
    assert first.step == per_epoch + 1 and first.batch_in_epoch == 1
    torch.manual_seed(1234)  # a resumed process starts with some other RNG state
    second = Trainer(cfg_a.replace(resume=True), progress=False)
    assert second.step == per_epoch + 1
    assert second.fit() == "done"

    assert len(full.history) == len(second.history) == 3 * per_epoch
    assert max(abs(a - b) for a, b in zip(full.history, second.history)) < 1e-5
    for (name, a), b in zip(full.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), name


def test_checkpoint_contents(tiny_dataset: Path, tmp_path: Path, make_config) -> None:
    cfg = make_config(tiny_dataset, tmp_path, epochs=1)
    trainer = Trainer(cfg, progress=False)
    trainer.fit()
    state = load_checkpoint(tmp_path / "last.ckpt")
    assert {"model", "ema", "optimizer", "scheduler", "scaler", "epoch", "step", "rng", "config"} <= set(state)
    assert state["step"] == 4 and state["epoch"] == 1 and state["class_names"] == trainer.class_names
    assert (tmp_path / "last.safetensors").exists() and (tmp_path / "best.safetensors").exists()
    assert (tmp_path / "metrics.csv").read_text().count("\ntrain,") == 4
    assert (tmp_path / "training_curves.png").stat().st_size > 1000


def test_resume_of_a_finished_run_trains_no_further_step(tiny_dataset: Path, tmp_path: Path, make_config) -> None:
    # a run killed after its last checkpoint (step == max_steps) and then resumed must not add
    # a step beyond max_steps (found by the SIGKILL test: the resumed run ended at step 8 of 7)
    cfg = make_config(tiny_dataset, tmp_path, max_steps=3, epochs=5)
    first = Trainer(cfg, progress=False)
    assert first.fit() == "max_steps" and first.step == 3
    before = load_checkpoint(tmp_path / "last.ckpt")
    again = Trainer(cfg.replace(resume=True), progress=False)
    assert again.fit() == "max_steps"
    after = load_checkpoint(tmp_path / "last.ckpt")
    assert again.step == after["step"] == 3 and len(after["history"]) == 3
    assert after["history"] == before["history"]
    for key, value in before["model"].items():
        assert torch.equal(value, after["model"][key]), key
    assert (tmp_path / "metrics.csv").read_text().count("\ntrain,") == 3


def test_a_new_run_in_the_folder_of_another_is_refused(tiny_dataset: Path, tmp_path: Path, make_config) -> None:
    # it used to overwrite last.ckpt, drop the old metrics rows and keep the old best.*: two runs mixed
    cfg = make_config(tiny_dataset, tmp_path, max_steps=2, epochs=5)
    assert Trainer(cfg, progress=False).fit() == "max_steps"
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert {"last.ckpt", "best.safetensors", "metrics.csv"} <= set(before)
    with pytest.raises(ValueError, match=rf"{tmp_path} already holds a training run \(last.ckpt, .*--resume"):
        Trainer(cfg.replace(max_steps=1), progress=False)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    assert Trainer(cfg.replace(resume="auto"), progress=False).step == 2  # resuming it is fine


def test_resume_names_changed_settings_and_refuses_another_optimizer(
    tiny_dataset: Path, tmp_path: Path, make_config
) -> None:
    from efficientdet.engine.checkpoint import CheckpointError

    cfg = make_config(tiny_dataset, tmp_path, max_steps=1, epochs=5)
    assert Trainer(cfg, progress=False).fit() == "max_steps"
    before = (tmp_path / "last.ckpt").read_bytes()
    lines: list[str] = []
    changed = cfg.replace(resume=True, max_steps=2, **{"optim.lr": 0.5, "data.hflip": 0.0})
    resumed = Trainer(changed, log=lines.append, progress=False)
    # the new lr used to be dropped without a word (the optimiser's state brings the old one back)
    assert [x for x in lines if x.startswith("warning: settings")] == [
        "warning: settings changed since the checkpoint: data.hflip: 0.5 -> 0.0; optim.lr: 0.01 -> 0.5 (no effect: restored)"
    ]  # max_steps: a resumed run may go longer, unremarked
    assert resumed.optimizer.param_groups[0]["initial_lr"] == 0.01
    # another optimiser used to fail with "does not fit this training run ('step')"
    with pytest.raises(CheckpointError, match=r"optim.optimizer='sgd', this config 'adamw': its optimiser state cannot"):
        Trainer(cfg.replace(resume=True, **{"optim.optimizer": "adamw"}), progress=False)
    frozen, message = cfg.replace(resume=True, freeze_backbone=True), "freeze_backbone=False, this config True"
    with pytest.warns(UserWarning, match="randomly initialised"), pytest.raises(CheckpointError, match=message):
        Trainer(frozen, progress=False)
    assert (tmp_path / "last.ckpt").read_bytes() == before


def test_a_refused_resume_advises_weights_that_a_new_run_accepts(tiny_dataset: Path, tmp_path: Path, make_config) -> None:
    """The refusal of another optimiser says how to start anew from the run's weights; that
    advice must work. It named ``weights=<out>/last.ckpt``, which ``weights=`` refuses (a
    training checkpoint, not inference weights)."""
    import re

    from efficientdet.engine.checkpoint import CheckpointError

    cfg = make_config(tiny_dataset, tmp_path / "run", max_steps=1, epochs=5)
    assert Trainer(cfg, progress=False).fit() == "max_steps"
    with pytest.raises(CheckpointError) as err:
        Trainer(cfg.replace(resume=True, **{"optim.optimizer": "adamw"}), progress=False)
    advised = re.search(r"\(weights=(\S+)\)\.$", str(err.value))
    assert advised is not None and advised.group(1) == str(tmp_path / "run" / "last.safetensors")
    fresh = cfg.replace(output=str(tmp_path / "new"), weights=advised.group(1), **{"optim.optimizer": "adamw"})
    assert Trainer(fresh, progress=False).step == 0  # a new run from those weights


def test_a_run_resumed_into_another_folder_writes_its_own_best(tiny_dataset: Path, tmp_path: Path, make_config) -> None:
    """``resume=<run>/best.ckpt --output new``: the checkpoint's best AP is the old folder's;
    a validation below it wrote no best.* in the new folder, and train then said "no
    best.safetensors: no validation has run"."""
    cfg = make_config(tiny_dataset, tmp_path / "old", max_steps=1, epochs=5)
    assert Trainer(cfg, progress=False).fit() == "max_steps"
    new = cfg.replace(
        output=str(tmp_path / "new"), resume=str(tmp_path / "old" / "last.ckpt"), max_steps=2, eval_every=1,
        **{"data.val": str(tiny_dataset)},
    )  # fmt: skip
    trainer = Trainer(new, progress=False)
    trainer.best_metric = 1.0  # as if the old folder's best scored AP 1.0
    assert trainer.fit() == "max_steps"
    assert (tmp_path / "new" / "best.safetensors").is_file() and (tmp_path / "new" / "best.ckpt").is_file()
    assert trainer.best_metric < 1.0  # this folder's best


def test_resume_in_another_number_of_processes_is_named(tiny_dataset: Path, tmp_path: Path, make_config) -> None:
    """A 2-process torchrun run resumed in one process (or the reverse) changed the global batch,
    the epoch's length in steps (the LR went back into warm-up: 0.006 -> 0.00357 on raccoon) and
    the epoch's position, without a word: the world size was not in the checkpoint."""
    cfg = make_config(tiny_dataset, tmp_path, max_steps=1, epochs=5)
    assert Trainer(cfg, progress=False).fit() == "max_steps"
    state = load_checkpoint(tmp_path / "last.ckpt")
    assert state["world_size"] == 1
    lines: list[str] = []
    Trainer(cfg.replace(resume=True, max_steps=2), log=lines.append, progress=False)
    assert not [x for x in lines if x.startswith("warning: settings")]  # same processes: nothing to say
    state["world_size"] = 2  # as rank 0 of `torchrun --nproc_per_node 2` saves it
    torch.save(state, tmp_path / "last.ckpt")
    lines.clear()
    Trainer(cfg.replace(resume=True, max_steps=2), log=lines.append, progress=False)
    [warning] = [x for x in lines if x.startswith("warning: settings")]
    assert "processes (torchrun --nproc_per_node): 2 -> 1: the global batch is 1x batch_size, not 2x, at the" in warning
    del state["world_size"]  # a checkpoint of an earlier version: not known, nothing said
    torch.save(state, tmp_path / "last.ckpt")
    lines.clear()
    Trainer(cfg.replace(resume=True, max_steps=2), log=lines.append, progress=False)
    assert not [x for x in lines if x.startswith("warning: settings")]



def test_resume_does_not_load_the_pretrained_backbone_again(
    tiny_dataset: Path, tmp_path: Path, make_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoint replaces every weight, yet a resume loaded the ImageNet backbone first:
    offline, a non-lite0 run could not be resumed ("... This needs internet"), and resuming
    with another ``--model`` said that instead of naming both variants."""
    from efficientdet.weights import pretrained_backbone

    cfg = make_config(tiny_dataset, tmp_path, max_steps=1, epochs=5, pretrained_backbone=True)
    assert Trainer(cfg, progress=False).fit() == "max_steps"

    def offline(*args: object, **kwargs: object) -> None:
        raise RuntimeError("this needs internet")

    monkeypatch.setattr(pretrained_backbone, "load_pretrained_backbone", offline)
    resumed = Trainer(cfg.replace(resume=True, max_steps=2), progress=False)
    assert resumed.step == 1 and resumed.fit() == "max_steps" and resumed.step == 2
