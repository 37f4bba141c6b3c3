import math

import pytest
import torch

from efficientdet.config import AnchorConfig
from efficientdet.ops.anchors import anchors_for_config, feature_size, generate_anchors

D0_RATIOS = ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4))


def test_single_level_by_hand() -> None:
    # 16x16 image, level 3 (stride 8): 2x2 locations, centres at 4 and 12; base = 1 * 8 -> half 4.
    anchors = generate_anchors((16, 16), 3, 3, 1, [(1.0, 1.0)], 1.0)
    expected = torch.tensor(
        [
            [0.0, 0.0, 8.0, 8.0],  # y=4, x=4
            [8.0, 0.0, 16.0, 8.0],  # y=4, x=12
            [0.0, 8.0, 8.0, 16.0],  # y=12, x=4
            [8.0, 8.0, 16.0, 16.0],  # y=12, x=12
        ]
    )
    assert anchors.dtype == torch.float32
    assert torch.equal(anchors, expected)


def test_anchor_order_within_location_by_hand() -> None:
    # One location (8x8 image, level 3, centre 4,4); anchor = octave * R + aspect.
    anchors = generate_anchors((8, 8), 3, 3, 2, [(1.0, 1.0), (2.0, 1.0)], 1.0)
    r = 8 * math.sqrt(2) / 2  # half size of octave 1
    expected = torch.tensor(
        [
            [0.0, 0.0, 8.0, 8.0],  # octave 0, (1, 1): half 4
            [-4.0, 0.0, 12.0, 8.0],  # octave 0, (2, 1): half w 8, half h 4
            [4 - r, 4 - r, 4 + r, 4 + r],  # octave 1, (1, 1)
            [4 - 2 * r, 4 - r, 4 + 2 * r, 4 + r],  # octave 1, (2, 1)
        ]
    )
    assert torch.allclose(anchors, expected, atol=1e-5)


def test_non_square_and_level_order() -> None:
    # 16 (h) x 32 (w), levels 3-4: level 3 has 2x4 locations, level 4 has 1x2.
    anchors = generate_anchors((16, 32), 3, 4, 1, [(1.0, 1.0)], 1.0)
    assert anchors.shape == (8 + 2, 4)
    assert torch.equal(anchors[1], torch.tensor([8.0, 0.0, 16.0, 8.0]))  # x advances first
    assert torch.equal(anchors[4], torch.tensor([0.0, 8.0, 8.0, 16.0]))  # then the next row
    assert torch.equal(anchors[8], torch.tensor([0.0, 0.0, 16.0, 16.0]))  # level 4, stride 16
    assert torch.equal(anchors[9], torch.tensor([16.0, 0.0, 32.0, 16.0]))


def test_bad_level_range_raises() -> None:
    with pytest.raises(ValueError, match=r"^need 0 <= min_level <= max_level, got 5\.\.3$"):
        generate_anchors((512, 512), 5, 3, 3, D0_RATIOS, 4.0)


def test_sides_not_multiple_of_largest_stride() -> None:
    # Lite0 runs at 320: P7 is ceil(320 / 128) = 3 wide, so its stride is 320 / 3.
    anchors = generate_anchors((320, 320), 7, 7, 1, ((1.0, 1.0),), 1.0)
    stride = 320 / 3
    assert anchors.shape == (9, 4)
    expected_first = torch.tensor([0.0, 0.0, stride, stride], dtype=torch.float32)
    assert torch.allclose(anchors[0], expected_first)
    assert torch.allclose(anchors[-1], torch.tensor([2 * stride, 2 * stride, 320.0, 320.0]))
    assert feature_size(320, 7) == 3 and feature_size(320, 6) == 5 and feature_size(512, 7) == 4


def test_anchors_for_config_cached_and_safe() -> None:
    cfg = AnchorConfig()
    a = anchors_for_config(cfg, (512, 512))
    assert a.shape == (9 * (64**2 + 32**2 + 16**2 + 8**2 + 4**2), 4)
    a.zero_()  # caller modification must not leak into the cache
    b = anchors_for_config(cfg, [512, 512])
    assert torch.equal(b, generate_anchors((512, 512), 3, 7, 3, D0_RATIOS, 4.0))


@pytest.mark.parametrize("image_size", [(512, 512), (384, 640), (320, 320), (448, 320)])
def test_matches_effdet(image_size: tuple[int, int]) -> None:
    effdet_anchors = pytest.importorskip("effdet.anchors")
    ref = effdet_anchors.Anchors(3, 7, 3, list(D0_RATIOS), 4.0, image_size).boxes  # yxyx
    ours = anchors_for_config(AnchorConfig(), image_size)
    assert ours.shape == ref.shape
    assert torch.allclose(ours, ref[:, [1, 0, 3, 2]], atol=1e-4, rtol=0)


def test_matches_effdet_from_config_d0() -> None:
    effdet = pytest.importorskip("effdet")
    config = effdet.get_efficientdet_config("tf_efficientdet_d0")
    ref = effdet.anchors.Anchors.from_config(config).boxes
    ours = anchors_for_config(
        AnchorConfig(anchor_scale=float(config.anchor_scale)), tuple(config.image_size)
    )
    assert torch.allclose(ours, ref[:, [1, 0, 3, 2]], atol=1e-4, rtol=0)
