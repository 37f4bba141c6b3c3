"""GridMask (data/gridmask.py): the official grid, without the official code's memory."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from efficientdet.data.gridmask import GridMask


def _official_mask(ratio: float, rotate: float, h: int, w: int) -> torch.Tensor:
    """google/automl's construction, same draws in the same order: stripes on a 1.5 max(h, w)
    square, rotated (bilinear), centre crop; bool [h, w], True where kept."""
    side = math.ceil(1.5 * max(h, w))
    lo, hi = int(min(0.5 * h, 0.3 * w)), int(max(0.5 * h, 0.3 * w))
    d = max(2, int(torch.randint(max(lo, 2), max(hi, 2) + 1, ())))
    length = min(max(int(d * ratio + 0.5), 1), d - 1)
    grid = torch.arange(side)
    rows = ((grid - int(torch.randint(0, d + 1, ()))) % d) < length
    cols = ((grid - int(torch.randint(0, d + 1, ()))) % d) < length
    full = (rows[:, None] | cols[None, :]).float()[None]
    full = TF.rotate(full, rotate * (float(torch.randn(())) - 1.0), interpolation=TF.InterpolationMode.BILINEAR, fill=[1.0])
    top, left = (side - h) // 2, (side - w) // 2
    return full[0, top : top + h, left : left + w] > 0.5


@pytest.mark.parametrize("rotate", [0.0, 10.0, 30.0])
@pytest.mark.parametrize(("h", "w"), [(60, 90), (91, 61), (200, 200)])
def test_the_mask_is_the_official_rotated_grid(rotate: float, h: int, w: int) -> None:
    mask = GridMask(rotate=rotate)
    for seed in range(5):
        torch.manual_seed(seed)
        official = _official_mask(0.6, rotate, h, w)
        torch.manual_seed(seed)
        ours = mask.mask(h, w)
        assert ours.shape == (h, w) and ours.dtype == torch.bool
        assert (ours == official).float().mean() >= (1.0 if rotate == 0 else 0.995)  # edges: nearest vs bilinear
        assert 0.05 < 1 - ours.float().mean() < 0.35  # ~16% zeroed at ratio 0.6


def test_masked_pixels_are_zero_and_the_rest_unchanged() -> None:
    torch.manual_seed(0)
    image = torch.randint(1, 256, (3, 50, 70), dtype=torch.uint8)
    boxes = torch.tensor([[5.0, 6.0, 40.0, 30.0]])
    torch.manual_seed(1)
    out, b, labels = GridMask(prob=1.0)(image, boxes, torch.tensor([3]))
    torch.manual_seed(1)
    float(torch.rand(()))  # the probability draw
    keep = GridMask(prob=1.0).mask(50, 70)
    assert torch.equal(out, image * keep) and torch.equal(b, boxes) and labels.tolist() == [3]
    assert out.dtype == torch.uint8 and 0 < int((~keep).sum()) < keep.numel()


def test_a_large_photo_costs_little_memory() -> None:
    """The official construction (a 1.5 max(h, w) square of floats, rotated) took ~45x the
    image's memory: 3.3 GB at 24 MP, ~0.8 GB more at the 6 MP here; per sample, per worker."""
    script = """
import resource, torch
from efficientdet.data.gridmask import GridMask
image = torch.full((3, 2000, 3000), 200, dtype=torch.uint8)
GridMask(prob=1.0)(image[:, :20, :30], torch.zeros((0, 4)), torch.zeros(0, dtype=torch.long))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
torch.manual_seed(0)
out, _, _ = GridMask(prob=1.0)(image, torch.zeros((0, 4)), torch.zeros(0, dtype=torch.long))
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024, float((out == 0).float().mean()))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    extra_mb, zeroed = done.stdout.split()
    assert int(extra_mb) < 250 and 0.05 < float(zeroed) < 0.35
