"""Training behaviour: non-finite losses, signals, frozen backbone, config handling."""

from __future__ import annotations

import multiprocessing
import re
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from efficientdet.engine.checkpoint import load_checkpoint
from efficientdet.engine.config import load_train_config
from efficientdet.engine.optim import parameter_groups, warmup_cosine
from efficientdet.engine.trainer import Trainer, TrainingDiverged


def _poison(trainer: Trainer, bad_steps: set[int]) -> None:
    """Make the loss NaN on the given batch numbers (1-based, counted over the run): NaN pixels."""
    original = trainer.stepper.inputs
    calls = {"n": 0}

    def inputs(batch):
        calls["n"] += 1
        images, boxes, labels = original(batch)
        if calls["n"] in bad_steps:
            images = images * float("nan")
        return images, boxes, labels

    trainer.stepper.inputs = inputs  # type: ignore[method-assign]


def test_a_nonfinite_loss_skips_the_step(tiny_dataset: Path, tmp_path: Path, make_config) -> None:
    trainer = Trainer(make_config(tiny_dataset, tmp_path, epochs=1), progress=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    _poison(trainer, {1})
    assert trainer.fit() == "done"
    assert trainer.nonfinite_steps == 1 and trainer.step == 3  # 4 batches, 1 skipped
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values() if v.is_floating_point())
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


def test_repeated_nonfinite_losses_stop_with_a_checkpoint(tiny_dataset: Path, tmp_path: Path, make_config) -> None:
    cfg = make_config(tiny_dataset, tmp_path, epochs=2, max_consecutive_nonfinite=3)
    trainer = Trainer(cfg, progress=False)
    _poison(trainer, {2, 3, 4})
    with pytest.raises(TrainingDiverged, match="3 non-finite losses in a row") as err:
        trainer.fit()
    assert str(tmp_path / "last.ckpt") in str(err.value)
    state = load_checkpoint(tmp_path / "last.ckpt")
    assert state["step"] == 1 and state["nonfinite_steps"] == 3


def test_nonfinite_losses_in_a_row_across_an_epoch_end_stop_the_run(
    tiny_dataset: Path, tmp_path: Path, make_config
) -> None:
    """The count restarted with each epoch: with fewer batches an epoch than the limit (8 raccoon
    photos, batch 4, limit 5), a diverged run skipped every step of all its epochs and ended
    "done", exit 0 (lr=1e30: 599 skipped steps, 1 taken)."""
    cfg = make_config(tiny_dataset, tmp_path, epochs=3, max_consecutive_nonfinite=3)
    trainer = Trainer(cfg, progress=False)
    _poison(trainer, {4, 5, 6})  # the last batch of epoch 1, the first two of epoch 2
    with pytest.raises(TrainingDiverged, match="3 non-finite losses in a row"):
        trainer.fit()
    assert load_checkpoint(tmp_path / "last.ckpt")["step"] == 3


def test_sigint_saves_and_stops_cleanly(tiny_dataset: Path, tmp_path: Path, make_config) -> None:
    trainer = Trainer(make_config(tiny_dataset, tmp_path, epochs=3), progress=False)
    original = trainer.stepper.optimizer_step

    def step_then_interrupt(time_fraction: float | None = None) -> None:
        original(time_fraction)
        if trainer.step == 2:
            signal.raise_signal(signal.SIGINT)  # as if the user pressed Ctrl-C

    trainer.stepper.optimizer_step = step_then_interrupt  # type: ignore[method-assign]
    # the handler before: Python's default_int_handler, or SIG_IGN when pytest was started in the
    # background by a non-interactive shell (which ignores SIGINT for it)
    before = signal.getsignal(signal.SIGINT)
    assert trainer.fit() == "signal"
    state = load_checkpoint(tmp_path / "last.ckpt")
    assert state["step"] == 2 and state["batch_in_epoch"] == 2
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


def test_sigterm_to_the_process_group_reaches_loader_workers_and_still_saves(
    tiny_dataset: Path, tmp_path: Path, make_config
) -> None:
    """``timeout``, ``kill -- -PGID``, systemd and Slurm signal every process of the run, the
    DataLoader workers too: they must leave stopping to the trainer. torch's worker handler
    let SIGTERM kill them, and the trainer died with "DataLoader worker ... killed by signal:
    Terminated" and no checkpoint."""
    trainer = Trainer(make_config(tiny_dataset, tmp_path, epochs=3, **{"data.workers": 1}), progress=False)
    original = trainer.stepper.optimizer_step
    alive: list[bool] = []

    def step_then_terminate_all(time_fraction: float | None = None) -> None:
        original(time_fraction)
        if trainer.step == 2:
            workers = multiprocessing.active_children()
            for worker in workers:
                # from another process: torch's worker handler exits quietly on its parent's SIGTERM
                subprocess.run(["kill", "-TERM", str(worker.pid)], check=True)
                worker.join(1.0)  # a worker that dies of it is gone by now
                alive.append(worker.is_alive())
            signal.raise_signal(signal.SIGTERM)

    trainer.stepper.optimizer_step = step_then_terminate_all  # type: ignore[method-assign]
    assert trainer.fit() == "signal"
    assert alive == [True]  # one worker, still alive after the signal
    state = load_checkpoint(tmp_path / "last.ckpt")
    assert state["step"] == 2 and state["batch_in_epoch"] == 2


def test_validation_data_of_other_classes_is_refused_before_training(
    tiny_dataset: Path, tmp_path: Path, make_config
) -> None:
    """Validation data the model cannot be scored on (other classes) used to fail at the first
    validation, after a whole epoch, with no checkpoint and no word of ``data.val``."""
    import json

    val = json.loads(tiny_dataset.read_text())
    val["categories"] = [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}]
    val["annotations"] = [a for a in val["annotations"] if a["category_id"] in (1, 2)]
    val_path = tiny_dataset.parent / "val_other_classes.json"
    val_path.write_text(json.dumps(val))
    cfg = make_config(tiny_dataset, tmp_path / "run", epochs=1, eval_every=1, **{"data.val": str(val_path)})
    with pytest.raises(ValueError, match=rf"^{re.escape(str(val_path))}: validation data: the model predicts 3 classes"):
        Trainer(cfg, progress=False)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_a_step_of_one_image_with_a_1x1_top_level_is_refused_naming_batch_size(
    tiny_dataset: Path, tmp_path: Path, make_config
) -> None:
    """At 128 px Lite0's top level is 1x1: a step of one image failed in the first batch norm
    with torch's "Expected more than 1 value per channel when training"."""
    with pytest.raises(ValueError, match=r"^batch_size: a step of 1 image \(batch_size=1, 8 training images .* 128x128"):
        Trainer(make_config(tiny_dataset, tmp_path / "run", batch_size=1), progress=False)
    assert not (tmp_path / "run").exists()


def test_validation_images_that_are_training_images_are_warned_about(
    tiny_dataset: Path, tmp_path: Path, make_config
) -> None:
    """A VOC folder with a train list but no val list: its val split is every XML, the training
    images included. The AP and best.* then measured memorising, without a word."""
    from efficientdet.data.formats import read_dataset, write_voc

    voc = tmp_path / "voc"
    write_voc(read_dataset(tiny_dataset), voc, split="train")  # ImageSets/Main/train.txt only
    lines: list[str] = []
    cfg = make_config(voc, tmp_path / "run", epochs=1, eval_every=1, **{"data.val": str(voc)})
    Trainer(cfg, log=lines.append, progress=False)
    assert [x for x in lines if "training images too" in x] == [
        f"warning: {voc}: 8 of its 8 validation images are training images too: the AP (and best.*) measures what "
        "was trained on (a VOC folder without a val list reads every XML as its val split)"
    ]
    lines.clear()  # validation data apart from the training data: no warning
    Trainer(cfg.replace(**{"data.val": str(tiny_dataset), "output": str(tmp_path / "run2")}), log=lines.append, progress=False)
    assert not any("training images too" in x for x in lines)


def test_frozen_backbone_does_not_change(tiny_dataset: Path, tmp_path: Path, make_config) -> None:
    with pytest.warns(UserWarning, match="backbone stays random"):  # random init, frozen on purpose
        trainer = Trainer(make_config(tiny_dataset, tmp_path, epochs=1, freeze_backbone=True), progress=False)
    before = {k: v.clone() for k, v in trainer.model.backbone.state_dict().items()}
    trainer.fit()
    after = trainer.model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN statistics


def test_iou_loss_option_reaches_the_step(tiny_dataset: Path, tmp_path: Path, make_config) -> None:
    """loss.iou_loss_type: the step passes the labeler's anchors and the term is in every loss."""
    cfg = make_config(tiny_dataset, tmp_path, epochs=1, **{"loss.iou_loss_type": "ciou"})
    trainer = Trainer(cfg, progress=False)
    seen: list[dict[str, torch.Tensor]] = []
    original = trainer.stepper.backward

    def backward(batch, sync: bool):
        losses = original(batch, sync)
        seen.append(losses)
        return losses

    trainer.stepper.backward = backward  # type: ignore[method-assign]
    assert trainer.fit() == "done"
    assert len(seen) == 4 and all(torch.isfinite(s["iou_loss"]) and s["iou_loss"] > 0 for s in seen)


def test_weight_decay_only_on_conv_and_linear_weights() -> None:
    from efficientdet import create_model

    model = create_model("efficientdet_d0", num_classes=2, **{"feature_net.repeats": 1})
    decay, no_decay = parameter_groups(model, 4e-5)
    kernels = {id(m.weight) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    assert {id(p) for p in decay["params"]} == kernels
    fusion = [n.weight for c in model.feature_net.cells for n in c.nodes]
    assert all(id(w) in {id(p) for p in no_decay["params"]} for w in fusion)
    assert decay["weight_decay"] == 4e-5 and no_decay["weight_decay"] == 0.0


def test_warmup_then_cosine() -> None:
    assert warmup_cosine(0, 10, 110, 0.1, 0.0) == pytest.approx(0.1)
    assert warmup_cosine(5, 10, 110, 0.1, 0.0) == pytest.approx(0.55)
    assert warmup_cosine(10, 10, 110, 0.1, 0.0) == pytest.approx(1.0)
    assert warmup_cosine(60, 10, 110, 0.1, 0.0) == pytest.approx(0.5)
    assert warmup_cosine(110, 10, 110, 0.1, 0.0) == pytest.approx(0.0)


def test_config_file_preset_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("preset: finetune\nmodel: efficientdet_lite0\noptim:\n  lr: 0.002\ndata:\n  train: a.json\n")
    cfg = load_train_config(path, ["optim.lr=0.005", "data.scale_range=[0.8, 1.2]", "epochs=7"])
    assert cfg.optim.optimizer == "adamw" and cfg.bn_momentum == 0.1  # from the preset
    assert cfg.freeze_backbone and cfg.pretrained_backbone  # measured on raccoon (docs/augmentation.md)
    assert load_train_config(None, None, "finetune").optim.lr == 6e-3  # ditto, at batch 8
    assert not load_train_config(path, ["freeze_backbone=false"]).freeze_backbone
    assert cfg.optim.lr == 0.005 and cfg.data.scale_range == (0.8, 1.2) and cfg.epochs == 7
    assert cfg.data.train == "a.json" and cfg.model == "efficientdet_lite0"
    with pytest.raises(ValueError, match=r"unknown training config field 'optim\.lrr'; valid: clip_grad_norm, .*\blr\b"):
        load_train_config(None, ["optim.lrr=1"])
    # a bad field in the file names the file (it read as if it came from the command line)
    for text, message in [
        ("optim:\n  lrr: 1\n", "unknown training config field 'optim.lrr'"),
        ("batch_size: 0\n", "batch_size: 0 must be >= 1"),
        ("preset: fine\n", "unknown preset 'fine'"),
    ]:
        path.write_text(text)
        with pytest.raises(ValueError, match=f"^{re.escape(f'{path}: {message}')}"):
            load_train_config(path)


def test_no_usable_images_is_a_clear_error(tmp_path: Path, make_config) -> None:
    from efficientdet.data.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", num_images=2, image_size=(64, 64), seed=0)
    for image in (tmp_path / "data" / "images").iterdir():
        image.unlink()  # every annotation now points at a missing image
    # one error naming where the images were looked for (not a warning per image, then this)
    with pytest.raises(FileNotFoundError, match=r"none of its 2 images was found \(file_name '.*' looked for under"):
        Trainer(make_config(data, tmp_path / "run"), progress=False)
    (tmp_path / "data" / "images" / "spare.png").write_bytes(b"")  # a folder with other files: the same
    with pytest.raises(FileNotFoundError, match="none of its 2 images was found"):
        Trainer(make_config(data, tmp_path / "run"), progress=False)
    # a VOC folder whose XMLs all name missing images: warned per file, then one error
    from efficientdet.data.formats import read_dataset, write_voc

    voc_data = make_synthetic_dataset(tmp_path / "voc_src", num_images=2, image_size=(64, 64), seed=0)
    voc = write_voc(read_dataset(voc_data), tmp_path / "voc")
    for image in (tmp_path / "voc" / "JPEGImages").iterdir():
        image.unlink()
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no usable training images"):
        Trainer(make_config(voc, tmp_path / "run_voc"), progress=False)


def test_time_budget_schedule_decays_by_the_end_of_the_budget() -> None:
    """Under a time budget the cosine follows the budget when that ends before total_steps."""
    from efficientdet.engine.optim import WarmupCosine

    schedule = WarmupCosine(warmup_steps=10, total_steps=100_000, start_factor=0.1, min_factor=0.0)
    assert schedule(5) == pytest.approx(0.55)  # warmup is by steps
    schedule.time_fraction = 0.2  # warmup ended at 20 % of the budget: decay spans the other 80 %
    assert schedule(10) == pytest.approx(1.0)
    schedule.time_fraction = 0.6  # half of the decay span
    assert schedule(50) == pytest.approx(0.5)
    schedule.time_fraction = 1.0
    assert schedule(90) == pytest.approx(0.0)
    # the step schedule still wins when it is further along
    short = WarmupCosine(warmup_steps=10, total_steps=110, start_factor=0.1, min_factor=0.0)
    short.time_fraction = 0.1
    assert short(10) == pytest.approx(1.0)
    assert short(60) == pytest.approx(0.5)


def test_time_budget_schedule_state_survives_a_checkpoint() -> None:
    from efficientdet.engine.optim import WarmupCosine

    params = [torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD(params, lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(2, 1000, 0.1, 0.0))
    for fraction in (0.1, 0.2, 0.5):
        sched.lr_lambdas[0].time_fraction = fraction
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, WarmupCosine(2, 1000, 0.1, 0.0))
    sched2.load_state_dict(state)
    assert sched2.lr_lambdas[0].decay_start_fraction == pytest.approx(0.2)
    assert sched2.lr_lambdas[0].time_fraction == pytest.approx(0.5)
    assert sched2.get_last_lr() == pytest.approx(sched.get_last_lr())


def test_schedule_checkpoint_restores_progress_not_the_run_length() -> None:
    """A run resumed with a larger max_steps/epochs follows the new, longer cosine."""
    from efficientdet.engine.optim import WarmupCosine, WarmupCosineLR

    def make(total: int) -> WarmupCosineLR:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        return WarmupCosineLR(opt, WarmupCosine(0, total, 0.1, 0.0))

    short = make(100)
    short.schedule.time_fraction = 0.3
    for _ in range(50):
        short.optimizer.step()
        short.step()
    longer = make(200)
    longer.load_state_dict(short.state_dict())
    assert longer.schedule.total_steps == 200  # not the checkpoint's 100
    assert longer.schedule.time_fraction == pytest.approx(0.3)  # progress does come back
    assert longer.schedule.decay_start_fraction == pytest.approx(0.3)
    longer.schedule.time_fraction = None
    longer.optimizer.step()
    longer.step()
    assert longer.last_epoch == 51
    assert longer.get_last_lr()[0] == pytest.approx(warmup_cosine(51, 0, 200, 0.1, 0.0))


def test_override_exponent_floats_are_numbers() -> None:
    # YAML 1.1 reads "2e-3" as a string; a float field must still get a number (path fields stay text)
    from efficientdet.engine.config import load_train_config

    config = load_train_config(None, ["optim.lr=2e-3", "data.hflip=5e-1", "data.val=1e3"], preset="finetune")
    assert config.optim.lr == 0.002 and config.data.hflip == 0.5 and config.data.val == "1e3"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        # a typo in a bool used to be a truthy string: the backbone silently frozen
        ("freeze_backbone=flase", "freeze_backbone: 'flase' is not true or false"),
        # an unknown precision used to fall through to fp16 autocast, even on a CPU
        ("amp=bf17", "amp: 'bf17' is not one of auto, off, bf16, fp16"),
        ("grad_accum=0", "grad_accum: 0 must be >= 1"),  # was a ZeroDivisionError traceback
        ("batch_size=abc", "batch_size: 'abc' is not a whole number"),  # was a TypeError traceback
        ("optim.lr=1e-3x", "optim.lr: '1e-3x' is not a number or null"),  # ditto
        ("optim.lr=-0.1", "optim.lr: -0.1 must be > 0"),
        ("optim.lr=.nan", "optim.lr: nan must be > 0"),
        ("epochs=0", "epochs: 0 must be >= 1"),  # trained nothing and exited 0
        ("max_steps=-1", "max_steps: -1 must be >= 1"),  # ditto
        ("time_budget_minutes=-1", "time_budget_minutes: -1.0 must be > 0"),  # was ignored
        ("optim.ema_decay=2", r"optim.ema_decay: 2.0 must be in \[0, 1\]"),
        ("data.crop_size=8", "data.crop_size: 8 must be >= 16"),  # crops need 16 px: was accepted, then CropTransform refused it
        ("data.scale_range=[2, 1]", "data.scale_range: .* 0 < low <= high"),
        ("data.scale_range=5", r"data.scale_range: 5 is not \[a number, a number\]"),
        ("data=foo", "data: 'foo' is not a section"),
        ("optim.optimizer=adam", "optim.optimizer: 'adam' is not one of sgd, adamw"),
    ],
)
def test_config_values_of_the_wrong_type_or_range_name_the_field(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_train_config(None, [override])


def test_close_mosaic_that_covers_every_epoch_is_refused() -> None:
    """``augment.mosaic=0.5 augment.close_mosaic=10 epochs=5``: mosaic was off from epoch 0,
    the setting ignored without a word."""
    with pytest.raises(ValueError, match=r"^augment.close_mosaic: 10 turns mosaic and mixup off for all 5 epochs"):
        load_train_config(None, ["augment.mosaic=0.5", "augment.close_mosaic=10", "epochs=5"])
    assert load_train_config(None, ["augment.mosaic=0.5", "augment.close_mosaic=4", "epochs=5"]).augment.close_mosaic == 4
    assert load_train_config(None, ["augment.close_mosaic=10", "epochs=5"]).epochs == 5  # no mosaic: nothing to turn off


def test_config_values_are_converted_to_the_fields_types(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("epochs: 3.0\noutput: 2024\nimage_size: [128, 192]\noptim:\n  lr: 1\n")
    cfg = load_train_config(path, ["resume=auto", "data.hflip=0"])
    assert cfg.epochs == 3 and isinstance(cfg.epochs, int)
    assert cfg.output == "2024" and cfg.image_size == (128, 192) and cfg.resume == "auto"
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float) and cfg.data.hflip == 0.0
    with pytest.raises(ValueError, match=r"epochs: 3\.5 is not a whole number"):
        load_train_config(path, ["epochs=3.5"])
    # a checkpoint's saved settings (to_dict) read back as they were, None in tuple fields included
    for original in (load_train_config(None, None, "finetune"), cfg.replace(**{"anchors.aspect_ratios": [[1, 2]]})):
        assert load_train_config(None, original.to_dict()) == original


def test_grad_accum_steps_on_the_last_micro_batches_of_an_epoch(tiny_dataset: Path, tmp_path: Path, make_config) -> None:
    # 8 images, batch 2: 4 batches an epoch; grad_accum 3 -> steps after batches 3 and 4 (the
    # schedule's ceil(4 / 3) = 2). The last batch used to wait for the next epoch's, adding its
    # gradients to that epoch's first step: 2 steps in 2 epochs, the cosine left at its peak.
    cfg = make_config(tiny_dataset, tmp_path, epochs=2, grad_accum=3, **{"optim.warmup_epochs": 0.0})
    trainer = Trainer(cfg, progress=False)
    assert trainer.steps_per_epoch == 2 and trainer.total_steps == 4
    assert trainer.fit() == "done"
    assert trainer.step == 4 and len(trainer.history) == 4
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.0)  # the schedule ran to its end
    assert all(p.grad is None for p in trainer.model.parameters())  # nothing left for a next epoch


def test_max_steps_at_an_epoch_end_validates_and_counts_that_epoch(
    tiny_dataset: Path, tmp_path: Path, make_config
) -> None:
    # 8 images, batch 2: 4 steps an epoch; max_steps=8 ends epoch 2 too. It used to report
    # 1 epoch and leave epoch 2 unvalidated (best.safetensors from epoch 1)
    cfg = make_config(tiny_dataset, tmp_path, max_steps=8, epochs=5, eval_every=1, **{"data.val": str(tiny_dataset)})
    trainer = Trainer(cfg, progress=False)
    assert trainer.fit() == "max_steps"
    assert trainer.step == 8 and trainer.epoch == 2
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[:3] for r in rows if r.startswith("val,")] == [["val", "1", "4"], ["val", "2", "8"]]
    state = load_checkpoint(tmp_path / "last.ckpt")
    assert (state["epoch"], state["batch_in_epoch"], state["step"]) == (2, 0, 8)
    resumed = Trainer(cfg.replace(resume=True, max_steps=9), progress=False)
    assert resumed.fit() == "max_steps" and resumed.step == 9 and resumed.epoch == 2  # goes on in epoch 3


def test_a_run_ending_inside_an_epoch_validates_its_final_weights(
    tiny_dataset: Path, tmp_path: Path, make_config
) -> None:
    # 4 steps an epoch; max_steps=6 ends inside epoch 2. The schedule has annealed the weights
    # of step 6, which used to go unvalidated: best.safetensors could only be epoch 1's.
    cfg = make_config(tiny_dataset, tmp_path, max_steps=6, epochs=5, eval_every=1, **{"data.val": str(tiny_dataset)})
    trainer = Trainer(cfg, progress=False)
    assert trainer.fit() == "max_steps"
    assert trainer.step == 6 and trainer.epoch == 1
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    val = [r.split(",") for r in rows if r.startswith("val,")]
    assert [r[:3] for r in val] == [["val", "1", "4"], ["val", "1", "6"]]  # epochs complete, step
    assert trainer.best_metric == pytest.approx(max(float(r[-3]) for r in val), rel=1e-4)  # ..., AP, AP50, AP75
    assert (tmp_path / "best.safetensors").is_file()
    # resumed at its end, the run trains and validates nothing more
    resumed = Trainer(cfg.replace(resume=True), progress=False)
    assert resumed.fit() == "max_steps" and resumed.step == 6
    assert (tmp_path / "metrics.csv").read_text().splitlines() == rows


def test_a_run_without_validation_does_not_validate_at_its_end(tiny_dataset: Path, tmp_path: Path, make_config) -> None:
    cfg = make_config(tiny_dataset, tmp_path, max_steps=6, epochs=5, eval_every=0, **{"data.val": str(tiny_dataset)})
    assert Trainer(cfg, progress=False).fit() == "max_steps"
    assert not [r for r in (tmp_path / "metrics.csv").read_text().splitlines() if r.startswith("val,")]


def test_the_run_folder_holds_its_settings_as_a_config_file(tiny_dataset: Path, tmp_path: Path, make_config) -> None:
    """`OUTPUT/config.yaml`: every setting of the run (preset, file and overrides resolved), a
    `--config` file that gives the same settings back (a run's settings were only inside
    last.ckpt, which a user cannot read or pass to `--config`)."""
    cfg = make_config(tiny_dataset, tmp_path / "run", epochs=1, **{"optim.lr": 0.02, "data.scale_range": [0.5, 1.5]})
    Trainer(cfg, progress=False).fit()
    written = tmp_path / "run" / "config.yaml"
    again = load_train_config(written)
    assert again == cfg and again.optim.lr == 0.02 and tuple(again.data.scale_range) == (0.5, 1.5)
    assert "resume" not in written.read_text()  # a copy of the run starts anew
    resumed = Trainer(load_train_config(written, {"resume": True, "epochs": 2}), progress=False)
    resumed.fit()  # a resumed run writes the settings it runs with
    assert load_train_config(written).epochs == 2
