"""Data parallelism over threads (engine/threads.py): the same gradients and BN statistics as
running the batch's shares one after another, deterministic, and wired into the trainer."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from efficientdet.engine.threads import ThreadDataParallel, resolve_threads
from efficientdet.engine.trainer import Trainer


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8, momentum=0.5), nn.SiLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8, momentum=0.5), nn.SiLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    )  # fmt: skip


def _loss(net: nn.Module, images: torch.Tensor, boxes, labels) -> dict[str, torch.Tensor]:
    target = torch.stack([lb[0] for lb in labels])
    loss = nn.functional.cross_entropy(net(images), target)
    return {"loss": loss, "double": 2 * loss}


def _batch(n: int = 5) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    images = torch.randn(n, 3, 12, 12, generator=g)
    labels = [torch.randint(0, 3, (1,), generator=g) for _ in range(n)]
    boxes = [torch.zeros(1, 4) for _ in range(n)]
    return images, boxes, labels


def test_gradients_and_bn_statistics_equal_the_shares_run_one_by_one() -> None:
    images, boxes, labels = _batch(5)  # shares of 3 and 2 (uneven on purpose)
    model = _model().train()
    reference = copy.deepcopy(model)
    tdp = ThreadDataParallel(model, threads=2)
    losses = tdp.forward_backward(_loss, images, boxes, labels, grad_scale=0.5)

    # by hand: each share through its own copy, loss weighted by its share of the batch
    grads = [torch.zeros_like(p) for p in reference.parameters()]
    copies, total = [], torch.tensor(0.0)
    for sl, weight in ((slice(0, 3), 3 / 5), (slice(3, 5), 2 / 5)):
        net = copy.deepcopy(reference)
        share = _loss(net, images[sl], boxes[sl], labels[sl])["loss"]
        for acc, g in zip(grads, torch.autograd.grad(share * weight * 0.5, list(net.parameters()))):
            acc += g
        copies.append((net, weight))
        total = total + weight * share.detach()
    assert torch.allclose(losses["loss"], total, atol=1e-6)
    assert torch.allclose(losses["double"], 2 * total, atol=1e-6)
    for p, g in zip(model.parameters(), grads):
        assert p.grad is not None and torch.allclose(p.grad, g, atol=1e-6)
    # BN running statistics: the share-weighted mean; num_batches_tracked: one step
    for name, buf in model.named_buffers():
        nets = [(dict(n.named_buffers())[name], w) for n, w in copies]
        expected = nets[0][0] if not buf.is_floating_point() else sum(b * w for b, w in nets)
        assert torch.allclose(buf, expected, atol=1e-6), name
    assert int(model[1].num_batches_tracked) == 1


def test_replicas_share_the_weights_and_follow_the_model() -> None:
    model = _model()
    tdp = ThreadDataParallel(model, threads=3)
    replica = tdp.replicas[1]
    assert all(a is b for a, b in zip(model.parameters(), replica.parameters()))
    assert all(a is not b for a, b in zip(model.buffers(), replica.buffers()))
    # a reloaded model (resume) and its eval/train modes reach the replicas before a step
    with torch.no_grad():
        model[1].running_mean.fill_(3.0)
    model.eval()
    images, boxes, labels = _batch(3)
    tdp.forward_backward(_loss, images, boxes, labels)
    assert not replica.training and torch.equal(replica[1].running_mean, torch.full((8,), 3.0))
    assert torch.equal(model[1].running_mean, torch.full((8,), 3.0))  # eval mode: unchanged


def test_gradients_accumulate_and_a_nonfinite_share_adds_nothing() -> None:
    model = _model().train()
    tdp = ThreadDataParallel(model, threads=2)
    images, boxes, labels = _batch(4)
    tdp.forward_backward(_loss, images, boxes, labels)
    once = [p.grad.clone() for p in model.parameters()]
    bad = images.clone()
    bad[3] = float("nan")  # second share only
    losses = tdp.forward_backward(_loss, bad, boxes, labels)
    assert not torch.isfinite(losses["loss"])
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), once))
    tdp.forward_backward(_loss, images, boxes, labels)  # grad accumulation adds up
    assert all(torch.allclose(p.grad, 2 * g, atol=1e-6) for p, g in zip(model.parameters(), once))


def test_min_share_uses_fewer_workers_for_small_batches() -> None:
    model = _model().train()
    tdp = ThreadDataParallel(model, threads=2, min_share=2)
    images, boxes, labels = _batch(3)  # 3 // 2 = 1 share: all 3 images in one worker
    tdp.forward_backward(_loss, images, boxes, labels)
    reference = _model().train()
    _loss(reference, images, boxes, labels)["loss"].backward()
    assert all(torch.allclose(a.grad, b.grad, atol=1e-6) for a, b in zip(model.parameters(), reference.parameters()))


def test_single_threaded_workers_are_deterministic() -> None:
    images, boxes, labels = _batch(6)
    runs = []
    for _ in range(2):
        model = _model().train()
        ThreadDataParallel(model, threads=2).forward_backward(_loss, images, boxes, labels)
        runs.append([p.grad for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_resolve_threads() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_threads("auto", cpu, False, batch_size=64) == torch.get_num_threads()
    assert resolve_threads("auto", cpu, False, batch_size=1) == 1
    assert resolve_threads("auto", cpu, True, batch_size=64) == 1  # DDP ranks
    assert resolve_threads("auto", cuda, False, batch_size=64) == 1
    assert resolve_threads(3, cpu, False, batch_size=8) == 3
    with pytest.raises(ValueError, match="single-process CPU"):
        resolve_threads(2, cuda, False, batch_size=8)
    with pytest.raises(ValueError, match=">= 1"):
        resolve_threads(0, cpu, False, batch_size=8)
    with pytest.raises(ValueError, match="at least 2"):
        ThreadDataParallel(_model(), threads=1)


def test_trainer_with_two_threads_is_deterministic_and_learns(tiny_dataset: Path, tmp_path: Path, make_config) -> None:
    histories = []
    # AdamW, no augmentation, epoch sums: a clear fall within 8 steps (with SGD and single steps,
    # the last step's loss came out above the first one's on another machine's CPU: noise)
    fast = {"optim.optimizer": "adamw", "optim.lr": 3e-3, "data.hflip": 0.0, "data.scale_range": (1.0, 1.0)}
    for run in ("a", "b"):
        cfg = make_config(
            tiny_dataset, tmp_path / run, epochs=4, batch_size=4, data_parallel_threads=2, device="cpu", **fast
        )
        trainer = Trainer(cfg, progress=False)
        assert trainer.threads is not None and trainer.threads.threads == 2
        assert trainer.threads.min_share == 2  # 128 px: the top level is 1x1
        assert trainer.fit() == "done"
        histories.append(trainer.history)
        assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values() if v.is_floating_point())
    assert histories[0] == histories[1] and len(histories[0]) == 8
    first_epoch, last_epoch = sum(histories[0][:2]), sum(histories[0][-2:])
    assert last_epoch < first_epoch, histories[0]  # here: 7.78 -> 6.30
    off = Trainer(make_config(tiny_dataset, tmp_path / "off", data_parallel_threads=1, device="cpu"), progress=False)
    assert off.threads is None
