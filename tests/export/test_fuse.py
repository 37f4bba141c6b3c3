"""BatchNorm folding and ``optimize_for_inference``: same outputs, fewer BNs, safe on sharing."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from efficientdet.export import count_batchnorms, fuse_batchnorm, optimize_for_inference

TOL = 1e-4
SIZE = (256, 256)
MODELS = ["efficientdet_lite0", "efficientdet_d0"]


def _outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        cls, box = model(x)
    return list(cls) + list(box)


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    assert [t.shape for t in a] == [t.shape for t in b]
    return max((x.float() - y.float()).abs().max().item() for x, y in zip(a, b))


@pytest.mark.parametrize("name", MODELS)
def test_fused_equals_unfused(make_model, name):
    model = make_model(name, SIZE)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = fuse_batchnorm(model)
    x = torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(3))
    ref, out = _outputs(model, x), _outputs(fused, x)
    assert min(t.std().item() for t in ref) > 0.05  # non-trivial outputs: the check means something
    assert _max_diff(out, ref) < TOL
    # Only the heads' per-level BNs remain: 2 heads x repeats x levels.
    cfg = model.config
    assert count_batchnorms(fused) == 2 * cfg.head.repeats * cfg.feature_net.num_levels
    assert all(".norms." in n for n, m in fused.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    # The caller's model is untouched (a copy was fused).
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert count_batchnorms(model) > count_batchnorms(fused)
    assert fused.config is model.config or fused.config == model.config


def test_batchnorm_act_becomes_its_activation(make_model):
    model = make_model("efficientdet_d0", SIZE)
    fused = fuse_batchnorm(model)
    block = fused.backbone.blocks[1][0]  # InvertedResidual: conv_pw -> bn1(act) -> conv_dw -> bn2(act) -> ...
    assert isinstance(block.bn1, nn.SiLU) and isinstance(block.bn2, nn.SiLU)
    assert isinstance(block.bn3, nn.Identity)  # the linear projection's BN has no activation
    assert block.conv_pw.bias is not None  # the BN's shift lives in the new bias
    assert isinstance(fused.feature_net.cells[0].nodes[0].conv.bn, nn.Identity)


class _Shared(nn.Module):
    """Patterns that must not be folded: a conv output with a second use, a conv called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(3, 4, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(4)
        self.conv_b = nn.Conv2d(4, 4, 1)
        self.bn_b1 = nn.BatchNorm2d(4)
        self.bn_b2 = nn.BatchNorm2d(4)
        self.conv_c = nn.Conv2d(4, 4, 1, bias=False)
        self.bn_c = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv_a(x)
        y = self.bn_a(a) + a  # conv_a's output is also used raw
        y = self.bn_b1(self.conv_b(y)) + self.bn_b2(self.conv_b(y))  # conv_b shared
        return self.bn_c(self.conv_c(y))  # the one foldable pair


def test_fuse_respects_sharing():
    torch.manual_seed(0)
    model = _Shared()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
    model.eval()
    fused = fuse_batchnorm(model)
    assert isinstance(fused.bn_c, nn.Identity)
    assert isinstance(fused.bn_a, nn.BatchNorm2d)
    assert isinstance(fused.bn_b1, nn.BatchNorm2d) and isinstance(fused.bn_b2, nn.BatchNorm2d)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert (fused(x) - model(x)).abs().max() < 1e-5


def test_fuse_inplace_returns_same_object(make_model):
    model = fuse_batchnorm(make_model("efficientdet_lite0", SIZE))  # a private copy
    assert fuse_batchnorm(model, inplace=True) is model
    assert count_batchnorms(fuse_batchnorm(model)) == count_batchnorms(model)  # idempotent


def test_optimize_for_inference(make_model):
    model = make_model("efficientdet_lite0", SIZE)
    fast = optimize_for_inference(model)
    assert not fast.training
    assert fast.class_head.convs[0].dw.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(4))
    assert _max_diff(_outputs(fast, x), _outputs(model, x)) < TOL
    plain = optimize_for_inference(model, channels_last=False, fuse=False)
    assert count_batchnorms(plain) == count_batchnorms(model)
    assert _max_diff(_outputs(plain, x), _outputs(model, x)) == 0.0


@pytest.mark.slow
def test_optimize_for_inference_compile(make_model):
    model = make_model("efficientdet_lite0", SIZE)
    fast = optimize_for_inference(model, compile=True)
    assert fast.config is not None  # attribute access reaches the wrapped model
    x = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(5))
    assert _max_diff(_outputs(fast, x), _outputs(model, x)) < TOL


def _best_time(model: nn.Module, x: torch.Tensor, runs: int) -> float:
    with torch.inference_mode():
        model(x)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return min(times)


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_report_cpu_speedup(make_model, name, capsys):
    """Reports eager CPU latency, native size, batch 1: unfused vs fused (timings are reported,
    not asserted; what is asserted is that the three timed models compute the same outputs)."""
    from efficientdet import create_model, get_config

    model = make_model(name, SIZE)
    size = get_config(name).image_size
    native = create_model(name, image_size=size).eval()
    native.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, *size)
    variants = {
        "unfused": native,
        "fused": fuse_batchnorm(native),
        "fused+channels_last": optimize_for_inference(native),
    }
    ref = _outputs(native, x)
    for key in ("fused", "fused+channels_last"):
        assert _max_diff(_outputs(variants[key], x), ref) < TOL, key
    # Interleaved rounds, best of each: the machine is shared, so the minimum is the signal.
    best = {k: float("inf") for k in variants}
    for _ in range(3):
        for key, m in variants.items():
            best[key] = min(best[key], _best_time(m, x, runs=3))
    with capsys.disabled():
        print(f"\n{name} {size} batch 1, {torch.get_num_threads()} threads: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in best.items()))
