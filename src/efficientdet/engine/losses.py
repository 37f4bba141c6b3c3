"""EfficientDet training losses: sigmoid focal loss + Huber box loss, normalised as the official code.

Targets follow :mod:`efficientdet.ops.matcher`: ``cls_targets`` [N, T] holds the class label
(``>= 0``) of a positive anchor, -1 for background and -2 for ignored anchors; ``box_targets``
[N, T, 4] holds (ty, tx, th, tw) codes for positives.

Normalisation (official TF automl and effdet ``loss_fn``): with ``P = sum of num_positives over the
batch + 1`` (the +1 avoids dividing by 0 on images without objects)

    class_loss = sum(focal) / P,   box_loss = sum(huber) / (4 P),
    loss = class_loss + box_loss_weight * box_loss.

Optional (official ``iou_loss_type``, off by default): the IoU-family loss of each positive
anchor's decoded box against its decoded target, ``iou_loss = sum(1 - IoU [+ penalty]) / (4 P)``,
added as ``iou_loss_weight * iou_loss`` (google/automl's ``BoxIouLoss`` normalisation).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import complete_box_iou_loss, distance_box_iou_loss, generalized_box_iou_loss

from ..ops.box_coder import decode
from ..ops.outputs import flatten_outputs

__all__ = ["DetectionLoss", "box_iou_loss", "focal_loss", "huber_box_loss"]


def _focal_terms(logits: Tensor, positive: bool, alpha: float, gamma: float, smoothing: float) -> Tensor:
    """Elementwise focal loss of ``logits`` (any shape) for a one-hot target of 1 or 0.

    With p = sigmoid(x) and s = label_smoothing / 2 (the smoothed target is t(1 - 2s) + s):
    target 1: alpha (1 - p)^gamma ce(x, 1 - s), target 0: (1 - alpha) p^gamma ce(x, s).
    The modulating factor uses the unsmoothed target (as the official code). Everything is in
    log-space via logsigmoid, so large |x| neither overflows nor loses the loss:
    log p = logsigmoid(x), log(1 - p) = logsigmoid(x) - x, and
    ce(x, t) = -(t log p + (1 - t) log(1 - p)) = (1 - t) x - log p.
    """
    log_p = F.logsigmoid(logits)
    if positive:
        return alpha * torch.exp(gamma * (log_p - logits)) * (smoothing * logits - log_p)
    return (1.0 - alpha) * torch.exp(gamma * log_p) * ((1.0 - smoothing) * logits - log_p)


def focal_loss(
    logits: Tensor,
    cls_targets: Tensor,
    alpha: float = 0.25,
    gamma: float = 1.5,
    label_smoothing: float = 0.0,
) -> Tensor:
    """Sigmoid focal loss summed per image: logits [N, T, K], cls_targets [N, T] -> [N] float32.

    Each of the K classes of an anchor is a binary problem whose target is 1 for the anchor's
    label and 0 otherwise (background anchors: all 0); ignored anchors (-2) contribute 0. Labels
    must be < K (not checked: that would need a device sync).

    The one-hot target is never built: the "target 0" loss is computed for all [N, T, K] entries,
    then, at the one entry per positive anchor, swapped for the "target 1" loss (a gather of
    [N, T] logits). This matches the official loss to float rounding.
    """
    if logits.ndim != 3 or cls_targets.shape != logits.shape[:2]:
        raise ValueError(
            f"need logits [N, T, K] and cls_targets [N, T], got {tuple(logits.shape)}, {tuple(cls_targets.shape)}"
        )
    logits = logits.float()  # AMP: the loss is always computed in float32
    smoothing = 0.5 * label_smoothing
    # The [N, T, K] "target 0" term, with its constant (1 - alpha) applied after the sum over K.
    log_p = F.logsigmoid(logits)
    per_anchor = (torch.exp(gamma * log_p) * ((1.0 - smoothing) * logits - log_p)).sum(dim=-1) * (1.0 - alpha)
    positive = cls_targets >= 0
    label_logit = logits.gather(-1, cls_targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # [N, T]
    swap = _focal_terms(label_logit, True, alpha, gamma, smoothing) - _focal_terms(
        label_logit, False, alpha, gamma, smoothing
    )
    per_anchor = per_anchor + torch.where(positive, swap, 0.0)
    # Mask after reducing over K: [N, T] instead of [N, T, K] elementwise work.
    per_anchor = torch.where(cls_targets >= -1, per_anchor, 0.0)
    return per_anchor.sum(dim=-1)


def huber_box_loss(box_outputs: Tensor, box_targets: Tensor, cls_targets: Tensor, delta: float = 0.1) -> Tensor:
    """Huber loss summed per image over the positive anchors: [N, T, 4], [N, T, 4], [N, T] -> [N].

    huber(e) = 0.5 e^2 for |e| <= delta, else delta (|e| - 0.5 delta) (the official, unscaled
    form: not divided by delta like smooth-L1).

    Which anchors count: the official code masks ``box_targets != 0`` elementwise, i.e. it
    infers "positive" from the targets being non-zero, so a positive anchor's coordinate whose
    code is exactly 0 (box centred exactly on the anchor, or exactly the anchor's size) is
    silently left out. We use the explicit rule instead: all 4 codes of every positive anchor
    (``cls_targets >= 0``), nothing elsewhere. The two agree except on such exact zeros.
    """
    if box_outputs.shape != box_targets.shape or box_outputs.shape[:2] != cls_targets.shape:
        raise ValueError(
            f"need box_outputs/box_targets [N, T, 4] and cls_targets [N, T], got {tuple(box_outputs.shape)}, "
            f"{tuple(box_targets.shape)}, {tuple(cls_targets.shape)}"
        )
    err = (box_outputs.float() - box_targets.float()).abs()
    quadratic = err.clamp(max=delta)
    loss = 0.5 * quadratic * quadratic + delta * (err - quadratic)
    return torch.where((cls_targets >= 0).unsqueeze(-1), loss, 0.0).sum(dim=(1, 2))


def _iou_loss(pred: Tensor, target: Tensor, reduction: str = "sum", eps: float = 1e-7) -> Tensor:
    """1 - IoU of paired xyxy boxes [M, 4], [M, 4] (torchvision has only the penalised variants)."""
    lt = torch.maximum(pred[:, :2], target[:, :2])
    rb = torch.minimum(pred[:, 2:], target[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    area_p = (pred[:, 2:] - pred[:, :2]).clamp(min=0).prod(dim=1)
    area_t = (target[:, 2:] - target[:, :2]).clamp(min=0).prod(dim=1)
    loss = 1.0 - inter / (area_p + area_t - inter + eps)
    return loss.sum() if reduction == "sum" else loss


_IOU_LOSS_FNS = {
    "iou": _iou_loss,
    "giou": generalized_box_iou_loss,
    "diou": distance_box_iou_loss,
    "ciou": complete_box_iou_loss,
}


def box_iou_loss(
    box_outputs: Tensor, box_targets: Tensor, cls_targets: Tensor, anchors: Tensor, kind: str
) -> Tensor:
    """IoU-family loss summed over the positive anchors: [N, T, 4] codes, [N, T, 4] target codes,
    [N, T] labels, anchors [T, 4] xyxy -> scalar. Both codes are decoded with the anchors;
    ``kind``: iou, giou, diou or ciou (1 - IoU, and the GIoU / DIoU / CIoU penalties)."""
    if kind not in _IOU_LOSS_FNS:
        raise ValueError(f"unknown IoU loss {kind!r}; valid: {', '.join(_IOU_LOSS_FNS)}")
    if anchors.shape != (box_outputs.shape[1], 4):
        raise ValueError(f"need anchors [{box_outputs.shape[1]}, 4] for the IoU loss, got {tuple(anchors.shape)}")
    positive = cls_targets >= 0  # [N, T]
    rows = anchors.to(box_outputs.device, torch.float32).expand(positive.shape[0], -1, -1)[positive]  # [M, 4]
    if rows.shape[0] == 0:
        return box_outputs.float().sum() * 0.0  # keeps the graph (and the gradient) defined
    pred = decode(box_outputs.float()[positive], rows)
    target = decode(box_targets.float()[positive], rows)
    return _IOU_LOSS_FNS[kind](pred, target, reduction="sum")


class DetectionLoss(nn.Module):
    """Focal + weighted Huber loss of raw head outputs against anchor targets, official normalisation.

    ``num_classes`` is inferred from the head outputs when not given (class channels / anchors
    per location, where anchors per location = box channels / 4).
    """

    def __init__(
        self,
        alpha: float = 0.25,
        gamma: float = 1.5,
        delta: float = 0.1,
        box_loss_weight: float = 50.0,
        label_smoothing: float = 0.0,
        num_classes: int | None = None,
        iou_loss_type: str = "none",
        iou_loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if iou_loss_type != "none" and iou_loss_type not in _IOU_LOSS_FNS:
            raise ValueError(f"unknown IoU loss {iou_loss_type!r}; valid: none, {', '.join(_IOU_LOSS_FNS)}")
        self.iou_loss_type = iou_loss_type
        self.iou_loss_weight = iou_loss_weight
        self.alpha = alpha
        self.gamma = gamma
        self.delta = delta
        self.box_loss_weight = box_loss_weight
        self.label_smoothing = label_smoothing
        self.num_classes = num_classes

    def forward(
        self,
        class_outputs: Sequence[Tensor] | Tensor,
        box_outputs: Sequence[Tensor] | Tensor,
        cls_targets: Tensor,
        box_targets: Tensor,
        num_positives: Tensor,
        anchors: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Return ``{"loss", "class_loss", "box_loss"}`` (float32 scalars), and ``iou_loss``
        when an IoU loss is on.

        class_outputs/box_outputs: per-level head outputs [N, A*K, H_l, W_l] / [N, A*4, H_l, W_l]
        (or already flattened [N, T, K] / [N, T, 4]); cls_targets [N, T], box_targets [N, T, 4],
        num_positives [N], e.g. from :class:`efficientdet.ops.matcher.AnchorLabeler`; anchors
        [T, 4] xyxy, needed by the IoU loss only.
        """
        if isinstance(class_outputs, Tensor) and isinstance(box_outputs, Tensor):
            cls, box = class_outputs, box_outputs
        elif isinstance(class_outputs, Tensor) or isinstance(box_outputs, Tensor):
            raise ValueError("class_outputs and box_outputs must both be flattened tensors or both per-level lists")
        else:
            num_classes = self.num_classes
            if num_classes is None:
                anchors_per_location = box_outputs[0].shape[1] // 4
                num_classes = class_outputs[0].shape[1] // max(anchors_per_location, 1)
            cls, box = flatten_outputs(class_outputs, box_outputs, num_classes)
        if cls.shape[:2] != cls_targets.shape:
            raise ValueError(
                f"head outputs give {tuple(cls.shape[:2])} (images, anchors), targets {tuple(cls_targets.shape)}"
            )
        normalizer = num_positives.float().sum() + 1.0
        class_loss = focal_loss(cls, cls_targets, self.alpha, self.gamma, self.label_smoothing).sum() / normalizer
        box_loss = huber_box_loss(box, box_targets, cls_targets, self.delta).sum() / (4.0 * normalizer)
        loss = class_loss + self.box_loss_weight * box_loss
        if self.iou_loss_type == "none":
            return {"loss": loss, "class_loss": class_loss, "box_loss": box_loss}
        if anchors is None:
            raise ValueError(f"the {self.iou_loss_type} loss decodes boxes: pass the anchors")
        iou_loss = box_iou_loss(box, box_targets, cls_targets, anchors, self.iou_loss_type) / (4.0 * normalizer)
        loss = loss + self.iou_loss_weight * iou_loss
        return {"loss": loss, "class_loss": class_loss, "box_loss": box_loss, "iou_loss": iou_loss}
