"""ModelEMA: hand-computed averages, and parameters that cannot be averaged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from efficientdet.engine.ema import ModelEMA


class _WithIntegerParameter(nn.Module):
    """A float weight and an integer parameter, as a quantization wrapper adds (bit widths)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(3))
        self.bits = nn.Parameter(torch.tensor([8], dtype=torch.int32), requires_grad=False)
        self.register_buffer("count", torch.zeros(1))


def test_ema_averages_floats_and_copies_integer_parameters_and_buffers() -> None:
    model = _WithIntegerParameter()
    ema = ModelEMA(model, decay=0.5, warmup_steps=0)
    with torch.no_grad():
        model.weight.fill_(2.0)
        model.bits.fill_(7)
        model.count.fill_(5.0)
    ema.update(model)
    # 0.5 * 0 + 0.5 * 2 = 1
    assert torch.equal(ema.module.weight, torch.full((3,), 1.0))
    assert ema.module.bits.dtype == torch.int32 and int(ema.module.bits) == 7
    assert float(ema.module.count) == 5.0
    ema.update(model)  # 0.5 * 1 + 0.5 * 2
    assert ema.module.weight[0].item() == pytest.approx(1.5)


def test_ema_decay_warms_up() -> None:
    ema = ModelEMA(nn.Linear(2, 2), decay=0.9, warmup_steps=10)
    assert ema.current_decay() == 0.0
    ema.updates = 10
    assert ema.current_decay() == pytest.approx(0.9 * (1 - torch.exp(torch.tensor(-1.0)).item()))
