"""Activation checkpointing: the same gradients (and BN statistics) as the plain step."""

from __future__ import annotations

import copy

import pytest
import torch

from efficientdet import create_model
from efficientdet.engine.setup import prepare_for_training
from efficientdet.models.checkpointing import set_grad_checkpointing


def _step(model: torch.nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """One forward/backward in train mode (drop-path on): gradients by parameter name."""
    torch.manual_seed(123)  # the same drop-path draws in both runs; checkpoint replays them
    cls, box = model(images)
    weights = torch.Generator().manual_seed(7)
    loss = sum((t * torch.randn(t.shape, generator=weights)).sum() for t in [*cls, *box])
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("prepared", [False, True], ids=["plain", "cpu-training-rewrites"])
def test_checkpointed_gradients_equal_plain(prepared: bool) -> None:
    torch.manual_seed(0)
    plain = create_model("efficientdet_d0", num_classes=3, image_size=128)
    if prepared:  # channels-last, lean BN + SiLU, 1x1 convs as GEMMs: what CPU training runs
        prepare_for_training(plain, torch.device("cpu"), True, None)
    plain.train()
    ckpt = copy.deepcopy(plain)
    set_grad_checkpointing(ckpt)
    images = torch.randn(2, 3, 128, 128)
    if prepared:
        images = images.contiguous(memory_format=torch.channels_last)

    g_plain, g_ckpt = _step(plain, images), _step(ckpt, images)
    assert g_plain.keys() == g_ckpt.keys() and len(g_plain) > 100
    for name, grad in g_plain.items():
        torch.testing.assert_close(g_ckpt[name], grad, atol=1e-6, rtol=0, msg=name)
    # recomputation must not update BN running statistics a second time
    for (name, a), (_, b) in zip(plain.named_buffers(), ckpt.named_buffers()):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=0, msg=name)
    assert ckpt.backbone.blocks[0].forward.__self__ is ckpt.backbone.blocks[0]


def test_copies_and_eval_are_unaffected() -> None:
    torch.manual_seed(0)
    model = create_model("efficientdet_lite0", num_classes=2, image_size=128)
    keys = list(model.state_dict())
    set_grad_checkpointing(model)
    assert list(model.state_dict()) == keys  # checkpoint files are unchanged
    twin = copy.deepcopy(model)  # e.g. the EMA: its stages run their own weights
    assert twin.backbone.blocks[1].forward.__self__ is twin.backbone.blocks[1]
    model.eval()
    with torch.no_grad():
        x = torch.randn(1, 3, 128, 128)
        out = model(x)
        set_grad_checkpointing(model, False)
        assert "forward" not in vars(model.backbone.blocks[1])
        ref = model(x)
    for a, b in zip(out[0] + out[1], ref[0] + ref[1]):
        assert torch.equal(a, b)
