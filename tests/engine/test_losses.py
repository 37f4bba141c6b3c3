import math
import re
import warnings
from types import SimpleNamespace

import pytest
import torch

from efficientdet.engine.losses import DetectionLoss, box_iou_loss, focal_loss, huber_box_loss
from efficientdet.ops.outputs import flatten_outputs

# A small pyramid: 128 px input, levels 3-7 -> 16, 8, 4, 2, 1; 9 anchors per location.
FEATS = [16, 8, 4, 2, 1]
A, K, N = 9, 5, 3
T = sum(f * f * A for f in FEATS)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _random_case(seed: int, scale: float = 3.0):
    gen = torch.Generator().manual_seed(seed)
    class_out = [torch.randn(N, A * K, f, f, generator=gen) * scale for f in FEATS]
    box_out = [torch.randn(N, A * 4, f, f, generator=gen) * 0.2 for f in FEATS]
    # ~5% positives, some ignored, the rest background; one image without positives.
    u = torch.rand(N, T, generator=gen)
    cls_t = torch.where(u < 0.05, torch.randint(0, K, (N, T), generator=gen), -1)
    cls_t = torch.where(u > 0.97, -2, cls_t)
    cls_t[2] = torch.where(cls_t[2] >= 0, -1, cls_t[2])
    box_t = torch.randn(N, T, 4, generator=gen) * 0.3 * (cls_t >= 0).unsqueeze(-1)  # zeros off positives
    num_pos = (cls_t >= 0).sum(1)
    return class_out, box_out, cls_t, box_t, num_pos


def _effdet_loss(class_out, box_out, cls_t, box_t, num_pos, label_smoothing=0.0, legacy=False):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from effdet.loss import DetectionLoss as EffdetLoss

    cfg = SimpleNamespace(
        num_classes=K, alpha=0.25, gamma=1.5, delta=0.1, box_loss_weight=50.0,
        label_smoothing=label_smoothing, legacy_focal=legacy, jit_loss=False,
    )
    cls_levels, box_levels, start = [], [], 0
    for f in FEATS:
        stop = start + f * f * A
        cls_levels.append(cls_t[:, start:stop].reshape(N, f, f, A))
        box_levels.append(box_t[:, start:stop].reshape(N, f, f, A * 4))
        start = stop
    return EffdetLoss(cfg)(class_out, box_out, cls_levels, box_levels, num_pos.float())


@pytest.mark.parametrize("seed,label_smoothing,legacy", [(0, 0.0, False), (1, 0.0, True), (2, 0.1, False)])
def test_equals_effdet(seed: int, label_smoothing: float, legacy: bool) -> None:
    case = _random_case(seed)
    ours = DetectionLoss(label_smoothing=label_smoothing)(*case)
    total, cls_loss, box_loss = _effdet_loss(*case, label_smoothing=label_smoothing, legacy=legacy)
    assert torch.allclose(ours["class_loss"], cls_loss, rtol=1e-5, atol=1e-5)
    assert torch.allclose(ours["box_loss"], box_loss, rtol=1e-5, atol=1e-7)
    assert torch.allclose(ours["loss"], total, rtol=1e-5, atol=1e-5)


def test_gradients_equal_effdet() -> None:
    class_out, box_out, cls_t, box_t, num_pos = _random_case(3)
    for t in class_out + box_out:
        t.requires_grad_(True)
    DetectionLoss()(class_out, box_out, cls_t, box_t, num_pos)["loss"].backward()
    ours = [t.grad.clone() for t in class_out + box_out]
    for t in class_out + box_out:
        t.grad = None
    _effdet_loss(class_out, box_out, cls_t, box_t, num_pos)[0].backward()
    for a, b in zip(ours, [t.grad for t in class_out + box_out]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


def test_focal_by_hand() -> None:
    # One anchor, two classes, label 0: class 0 is a positive, class 1 a negative.
    x0, x1 = 2.0, -1.0
    logits = torch.tensor([[[x0, x1], [0.0, 0.0], [5.0, 5.0]]])
    targets = torch.tensor([[0, -2, -1]])  # anchor 1 ignored, anchor 2 background
    p0, p1, p2 = _sigmoid(x0), _sigmoid(x1), _sigmoid(5.0)
    pos = 0.25 * (1 - p0) ** 1.5 * -math.log(p0)
    neg = 0.75 * p1**1.5 * -math.log(1 - p1)
    bg = 2 * 0.75 * p2**1.5 * -math.log(1 - p2)
    out = focal_loss(logits, targets)
    assert out.shape == (1,)
    assert out.item() == pytest.approx(pos + neg + bg, rel=1e-6)
    # Label smoothing 0.2: targets 0.9 / 0.1 inside the cross-entropy, modulating factor unchanged.
    s = 0.1
    pos_s = 0.25 * (1 - p0) ** 1.5 * -((1 - s) * math.log(p0) + s * math.log(1 - p0))
    neg_s = 0.75 * p1**1.5 * -(s * math.log(p1) + (1 - s) * math.log(1 - p1))
    out = focal_loss(logits[:, :1], targets[:, :1], label_smoothing=0.2)
    assert out.item() == pytest.approx(pos_s + neg_s, rel=1e-6)


def test_focal_is_stable_for_extreme_logits() -> None:
    logits = torch.tensor([[[100.0, -100.0], [-100.0, 100.0], [30.0, -30.0]]], requires_grad=True)
    targets = torch.tensor([[0, 0, 1]])
    loss = focal_loss(logits, targets)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(logits.grad).all()
    # Anchor 0 is perfectly right (~0 loss); anchor 1 is confidently wrong on both classes:
    # 0.25 * 1 * 100 (positive at -100) + 0.75 * 1 * 100 (negative at +100) = 100.
    # Anchor 2: label 1 at logit -30 and class 0 at +30 -> 0.25 * 30 + 0.75 * 30 = 30 (to ~1e-12).
    assert loss.item() == pytest.approx(130.0, rel=1e-5)


def test_huber_by_hand() -> None:
    outputs = torch.tensor([[[0.05, -0.3, 0.0, 1.0], [5.0, 5.0, 5.0, 5.0]]])
    targets = torch.zeros(1, 2, 4)
    cls_t = torch.tensor([[2, -1]])  # the second anchor (huge error) is not positive: no loss
    # |e| = 0.05 <= delta: 0.5 * 0.05^2; |e| = 0.3: 0.1 * (0.3 - 0.05); 0; 0.1 * (1 - 0.05).
    expected = 0.5 * 0.05**2 + 0.1 * (0.3 - 0.05) + 0.0 + 0.1 * (1.0 - 0.05)
    assert huber_box_loss(outputs, targets, cls_t).item() == pytest.approx(expected, rel=1e-6)


def test_zero_box_targets_of_positives_count() -> None:
    # Documented deviation: effdet skips a positive anchor's coordinate whose target is exactly
    # 0; we count all 4 codes of every positive anchor.
    outputs = torch.tensor([[[0.2, 0.2, 0.2, 0.2]]])
    targets = torch.tensor([[[0.0, 0.0, 0.1, 0.1]]])
    expected = 2 * 0.1 * (0.2 - 0.05) + 2 * 0.5 * 0.1**2
    assert huber_box_loss(outputs, targets, torch.tensor([[0]])).item() == pytest.approx(expected, rel=1e-6)


def test_normalisation_by_hand() -> None:
    gen = torch.Generator().manual_seed(4)
    cls = torch.randn(2, 6, K, generator=gen)
    box = torch.randn(2, 6, 4, generator=gen)
    cls_t = torch.tensor([[0, -1, -1, 3, -2, -1], [-1, 4, -1, -1, -1, -1]])
    box_t = torch.randn(2, 6, 4, generator=gen)
    num_pos = torch.tensor([2, 1])
    out = DetectionLoss(box_loss_weight=50.0)(cls, box, cls_t, box_t, num_pos)
    p = 2 + 1 + 1.0
    assert out["class_loss"].item() == pytest.approx(focal_loss(cls, cls_t).sum().item() / p, rel=1e-6)
    assert out["box_loss"].item() == pytest.approx(huber_box_loss(box, box_t, cls_t).sum().item() / (4 * p), rel=1e-6)
    assert out["loss"].item() == pytest.approx(out["class_loss"].item() + 50 * out["box_loss"].item(), rel=1e-6)


def test_flattened_inputs_and_class_inference() -> None:
    class_out, box_out, cls_t, box_t, num_pos = _random_case(5)
    cls, box = flatten_outputs(class_out, box_out, K)
    a = DetectionLoss()(class_out, box_out, cls_t, box_t, num_pos)
    b = DetectionLoss(num_classes=K)(cls, box, cls_t, box_t, num_pos)
    for key in ("loss", "class_loss", "box_loss"):
        assert torch.allclose(a[key], b[key])
    with pytest.raises(ValueError, match=re.escape(f"head outputs give ({N}, {T}) (images, anchors), targets ({N}, {T - 1})")):
        DetectionLoss()(class_out, box_out, cls_t[:, :-1], box_t[:, :-1], num_pos)


def test_no_positives_is_finite() -> None:
    cls = torch.randn(1, 4, 3)
    out = DetectionLoss()(cls, torch.randn(1, 4, 4), torch.full((1, 4), -1), torch.zeros(1, 4, 4), torch.zeros(1))
    assert out["box_loss"].item() == 0.0
    assert torch.isfinite(out["loss"])
    assert out["class_loss"].item() == pytest.approx(focal_loss(cls, torch.full((1, 4), -1)).item())


# --------------------------------------------------------------------------- IoU-family loss

# One anchor (0, 0, 10, 10); the target code 0 decodes to the anchor itself.
ANCHOR = torch.tensor([[0.0, 0.0, 10.0, 10.0]])


def _one(code: list[float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.tensor([[code]]), torch.zeros(1, 1, 4), torch.tensor([[0]])


def test_iou_losses_by_hand() -> None:
    # tx = 0.5 moves the box half its width: (5, 0, 15, 10). Overlap 50, union 150, IoU 1/3;
    # the enclosing box (0, 0, 15, 10) is the union, so GIoU adds nothing; centres are 5 apart
    # and the enclosing diagonal^2 is 15^2 + 10^2 = 325; equal aspect ratios: CIoU = DIoU.
    box, target, labels = _one([0.0, 0.5, 0.0, 0.0])
    expected = {"iou": 2 / 3, "giou": 2 / 3, "diou": 2 / 3 + 25 / 325, "ciou": 2 / 3 + 25 / 325}
    for kind, value in expected.items():
        assert box_iou_loss(box, target, labels, ANCHOR, kind).item() == pytest.approx(value, rel=1e-5), kind
    # ty = 1.5: (0, 15, 10, 25), no overlap; enclosing (0, 0, 10, 25) = 250, union 200:
    # GIoU = 0 - 50 / 250, so the loss is 1.2 (1 - IoU alone would be flat at 1).
    box, target, labels = _one([1.5, 0.0, 0.0, 0.0])
    assert box_iou_loss(box, target, labels, ANCHOR, "iou").item() == pytest.approx(1.0)
    assert box_iou_loss(box, target, labels, ANCHOR, "giou").item() == pytest.approx(1.2, rel=1e-5)


def test_ciou_penalises_a_wrong_aspect_ratio() -> None:
    # tw = log 2: (-5, 0, 15, 10), the anchor inside it: IoU 1/2, same centre (no distance
    # term). v = 4/pi^2 (atan(2) - atan(1))^2, alpha = v / (1 - IoU + v).
    box, target, labels = _one([0.0, 0.0, 0.0, math.log(2.0)])
    v = 4 / math.pi**2 * (math.atan(2.0) - math.atan(1.0)) ** 2
    alpha = v / (0.5 + v)
    assert box_iou_loss(box, target, labels, ANCHOR, "diou").item() == pytest.approx(0.5, rel=1e-5)
    assert box_iou_loss(box, target, labels, ANCHOR, "ciou").item() == pytest.approx(0.5 + alpha * v, rel=1e-4)


def test_iou_loss_counts_positives_only_and_is_normalised_as_the_box_loss() -> None:
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 40.0], [0.0, 0.0, 4.0, 8.0]])
    box = torch.tensor([[[0.0, 0.5, 0.0, 0.0], [3.0, 3.0, 1.0, 1.0], [0.2, -0.1, 0.3, 0.0]]])
    box_t = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.1, 0.1, 0.0, 0.2]]])
    cls_t = torch.tensor([[0, -1, 2]])  # the middle anchor (wildly off) is background: not counted
    cls = torch.randn(1, 3, 3)
    num_pos = torch.tensor([2])
    plain = DetectionLoss()(cls, box, cls_t, box_t, num_pos)
    out = DetectionLoss(iou_loss_type="giou", iou_loss_weight=2.0)(cls, box, cls_t, box_t, num_pos, anchors)
    positives = box_iou_loss(box[:, [0, 2]], box_t[:, [0, 2]], cls_t[:, [0, 2]], anchors[[0, 2]], "giou")
    assert out["iou_loss"].item() == pytest.approx(positives.item() / (4 * 3.0), rel=1e-6)
    assert out["loss"].item() == pytest.approx(plain["loss"].item() + 2.0 * out["iou_loss"].item(), rel=1e-6)
    assert "iou_loss" not in plain  # off by default: the official loss, unchanged


def test_iou_loss_without_positives_has_a_gradient_of_zero() -> None:
    box = torch.randn(1, 4, 4, requires_grad=True)
    anchors = torch.tensor([[0.0, 0.0, 8.0, 8.0]] * 4)
    out = DetectionLoss(iou_loss_type="ciou")(
        torch.randn(1, 4, 2), box, torch.full((1, 4), -1), torch.zeros(1, 4, 4), torch.zeros(1), anchors
    )
    assert out["iou_loss"].item() == 0.0
    out["loss"].backward()
    assert box.grad is not None and torch.count_nonzero(box.grad) == 0


def test_iou_loss_errors() -> None:
    from efficientdet.engine.config import load_train_config

    with pytest.raises(ValueError, match=re.escape("loss.iou_loss_type: unknown 'xiou'; valid: none, iou, giou, diou, ciou")):
        load_train_config(None, ["loss.iou_loss_type=xiou"])
    with pytest.raises(ValueError, match=re.escape("loss.iou_loss_weight")):
        load_train_config(None, ["loss.iou_loss_weight=-1"])
    box, target, labels = _one([0.0, 0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="pass the anchors"):
        DetectionLoss(iou_loss_type="giou")(torch.zeros(1, 1, 1), box, labels, target, torch.ones(1))


def test_mixed_flattened_and_per_level_outputs_are_refused() -> None:
    class_out, box_out, cls_t, box_t, num_pos = _random_case(0)
    cls_flat, box_flat = flatten_outputs(class_out, box_out, K)
    loss = DetectionLoss(num_classes=K)
    for cls_in, box_in in ((cls_flat, box_out), (class_out, box_flat)):
        with pytest.raises(ValueError, match="both be flattened tensors or both per-level lists"):
            loss(cls_in, box_in, cls_t, box_t, num_pos)
