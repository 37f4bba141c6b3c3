import math

import pytest
import torch

from efficientdet.ops.box_coder import decode, encode


def test_hand_computed_code() -> None:
    anchor = torch.tensor([[0.0, 0.0, 10.0, 20.0]])  # centre (x5, y10), w 10, h 20
    box = torch.tensor([[5.0, 0.0, 25.0, 10.0]])  # centre (x15, y5), w 20, h 10
    expected = torch.tensor([[(5 - 10) / 20, (15 - 5) / 10, math.log(10 / 20), math.log(20 / 10)]])
    assert torch.allclose(encode(box, anchor), expected, atol=1e-6)
    assert torch.allclose(decode(expected, anchor), box, atol=1e-5)


def test_zero_code_gives_anchor() -> None:
    anchors = torch.tensor([[0.0, 0.0, 8.0, 8.0], [-4.0, 2.0, 12.0, 6.0]])
    assert torch.allclose(decode(torch.zeros(2, 4), anchors), anchors)


def test_round_trip_and_batched_decode() -> None:
    g = torch.Generator().manual_seed(0)
    anchors = torch.rand(50, 4, generator=g) * 100
    anchors[:, 2:] += anchors[:, :2] + 1
    boxes = torch.rand(50, 4, generator=g) * 100
    boxes[:, 2:] += boxes[:, :2] + 1
    codes = encode(boxes, anchors)
    assert torch.allclose(decode(codes, anchors), boxes, atol=1e-3)
    batched = decode(torch.stack([codes, codes]), anchors)  # [2, 50, 4] with anchors [50, 4]
    assert batched.shape == (2, 50, 4)
    assert torch.allclose(batched[1], boxes, atol=1e-3)


def test_huge_codes_stay_finite() -> None:
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    out = decode(torch.tensor([[0.0, 0.0, 1000.0, 1000.0]]), anchors)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, torch.tensor([[5 - 5e4, 5 - 5e4, 5 + 5e4, 5 + 5e4]]), rtol=1e-4)


def test_degenerate_box_encodes_finite() -> None:
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    assert torch.isfinite(encode(torch.tensor([[3.0, 3.0, 3.0, 3.0]]), anchors)).all()


def test_matches_effdet_decoder() -> None:
    effdet_anchors = pytest.importorskip("effdet.anchors")
    g = torch.Generator().manual_seed(1)
    anchors = torch.rand(20, 4, generator=g) * 50
    anchors[:, 2:] += anchors[:, :2] + 1
    codes = torch.randn(20, 4, generator=g)
    ref = effdet_anchors.decode_box_outputs(codes, anchors[:, [1, 0, 3, 2]], output_xyxy=True)
    assert torch.allclose(decode(codes, anchors), ref, atol=1e-5)
