"""Anchor labelling for training: IoU argmax matching with force-match, as in official EfficientDet.

Target conventions (shared with :mod:`efficientdet.engine.losses`):

- ``cls_targets``: the matched ground-truth label (``>= 0``) for a positive anchor,
  :data:`BACKGROUND` (-1) for a negative one, :data:`IGNORE` (-2) for an anchor whose best IoU lies in
  ``[unmatched_threshold, match_threshold)`` (no loss at all). Labels are passed through unchanged,
  so 0-based labels stay 0-based.
- ``box_targets``: :func:`efficientdet.ops.box_coder.encode` of the matched box against the anchor
  for positives, zeros elsewhere.

Semantics of the official ``ArgMaxMatcher`` (TF automl and effdet) reproduced here:

1. every anchor takes the ground truth with the highest IoU (ties: the lowest GT index);
   ``IoU >= match_threshold`` positive, ``< unmatched_threshold`` negative, in between ignored;
2. force-match: each GT's best anchor (ties: the lowest anchor index) is made positive for that
   GT, overriding step 1 even if the anchor was matched to another GT; when several GTs share
   the same best anchor, the lowest GT index wins.

One deliberate deviation: a GT whose best IoU is 0 (zero-area or entirely outside all anchors)
is not force-matched. The official code would force it onto anchor 0 (argmax of an all-zero
row), an anchor it does not even touch, with box codes like log(1e-8); such boxes cannot occur
with the anchors covering the image and positive-area boxes inside it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from efficientdet.ops.box_coder import encode

__all__ = ["BACKGROUND", "IGNORE", "AnchorLabeler", "assign_anchors", "batched_anchor_iou"]

BACKGROUND = -1
IGNORE = -2


def batched_anchor_iou(anchors: Tensor, gt_boxes: Tensor) -> Tensor:
    """IoU of every anchor with every GT box of every image: anchors [T, 4], gt_boxes [N, M, 4] -> [N, M, T].

    Boxes are xyxy. The GT axis comes before the anchor axis so that the elementwise work and the
    per-GT reduction (force match) run over contiguous anchors. GT sides are clamped at 0, so an
    inverted or all-zero box has IoU 0 with everything (the union is then at least the anchor's
    area, never 0: anchors have positive area); for valid boxes this is the official formula.
    """
    # Contiguous [1, 1, T] rows: broadcasting against [N, M, 1] then runs the vectorised kernel.
    ax0, ay0, ax1, ay1 = (c.contiguous().view(1, 1, -1) for c in anchors.unbind(-1))
    gx0, gy0, gx1, gy1 = (c.unsqueeze(-1) for c in gt_boxes.unbind(-1))  # each [N, M, 1]
    gt_area = (gx1 - gx0).clamp(min=0) * (gy1 - gy0).clamp(min=0)  # [N, M, 1]
    anchor_area = (ax1 - ax0) * (ay1 - ay0)  # [1, 1, T]
    # The work is memory-bound: three [N, M, T] buffers, every later step in place or into them
    # (on CPU each fresh allocation of this size also costs a page-fault pass).
    inter = torch.minimum(ax1, gx1)
    tmp = torch.maximum(ax0, gx0)
    inter.sub_(tmp).clamp_(min=0)  # overlap width
    torch.minimum(ay1, gy1, out=tmp)
    tmp.sub_(torch.maximum(ay0, gy0)).clamp_(min=0)  # overlap height
    inter.mul_(tmp)
    union = torch.add(anchor_area, gt_area, out=tmp).sub_(inter)
    return inter.div_(union)


def _match(
    iou: Tensor, valid: Tensor, match_threshold: float, unmatched_threshold: float, force_match: bool
) -> Tensor:
    """Match indices [N, T] from IoU [N, M, T] and GT validity [N, M]: GT index >= 0, -1 bg, -2 ignore."""
    num_gt = iou.shape[1]
    # Padded GTs must have IoU 0 everywhere (their boxes are zeroed before the IoU): with a
    # positive match threshold they can then never be matched, nor win a tie against a real
    # match, and force matching skips them explicitly.
    best_iou, best_gt = iou.max(dim=1)  # [N, T]; ties -> lowest GT index (as argmax)
    matches = torch.where(
        best_iou >= match_threshold,
        best_gt,
        torch.where(best_iou < unmatched_threshold, BACKGROUND, IGNORE),
    )
    if force_match:
        gt_best_iou, gt_best_anchor = iou.max(dim=2)  # [N, M]; ties -> lowest anchor index
        forced = valid & (gt_best_iou > 0)
        gt_index = torch.arange(num_gt, device=iou.device).expand_as(gt_best_anchor)
        # Sentinel num_gt for GTs that force nothing; "amin" makes the lowest GT index win when
        # several GTs share a best anchor (the official argmax over the one-hot indicators).
        src = torch.where(forced, gt_index, num_gt)
        forced_gt = torch.full_like(matches, num_gt).scatter_reduce_(1, gt_best_anchor, src, reduce="amin")
        matches = torch.where(forced_gt < num_gt, forced_gt, matches)
    return matches


def _targets_from_matches(
    matches: Tensor, anchors: Tensor, gt_boxes: Tensor, gt_labels: Tensor, dense: bool | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """matches [N, T], anchors [T, 4], gt_boxes [N, M, 4], gt_labels [N, M] -> cls [N, T], box [N, T, 4], num_pos [N].

    ``dense``: encode all anchors and mask (default off CPU) instead of only the positives.
    """
    positive = matches >= 0
    index = matches.clamp(min=0)  # background/ignored rows gather GT 0, masked out below
    labels = gt_labels.to(torch.int64).gather(1, index)
    cls_targets = torch.where(positive, labels, matches)
    anchors = anchors.to(gt_boxes.dtype)
    if dense is None:
        dense = positive.device.type != "cpu"
    if not dense:
        # CPU: encode only the positives (a few hundred per image instead of all T anchors).
        img, anc = positive.nonzero(as_tuple=True)
        box_targets = gt_boxes.new_zeros((*matches.shape, 4))
        box_targets[img, anc] = encode(gt_boxes[img, matches[img, anc]], anchors[anc])
    else:
        # Accelerators: encode every anchor and mask, which avoids the data-dependent nonzero()
        # (a host-device sync); a few elementwise ops over [N, T, 4] cost next to nothing there.
        matched = gt_boxes.gather(1, index.unsqueeze(-1).expand(-1, -1, 4))  # [N, T, 4]
        box_targets = encode(matched, anchors.unsqueeze(0)).masked_fill_(~positive.unsqueeze(-1), 0.0)
    return cls_targets, box_targets, positive.sum(dim=1)


def _check_thresholds(match_threshold: float, unmatched_threshold: float) -> None:
    # A zero match threshold would make IoU-0 pairs (padding included) positive.
    if not 0.0 < match_threshold <= 1.0:
        raise ValueError(f"match_threshold must be in (0, 1], got {match_threshold}")
    if unmatched_threshold > match_threshold:
        raise ValueError(
            f"unmatched_threshold ({unmatched_threshold}) must not exceed match_threshold ({match_threshold})"
        )


def assign_anchors(
    anchors: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    match_threshold: float = 0.5,
    unmatched_threshold: float = 0.5,
    force_match: bool = True,
) -> tuple[Tensor, Tensor, int]:
    """Label the anchors of one image.

    anchors [T, 4] and gt_boxes [M, 4] are xyxy pixels, gt_labels [M] integer (>= 0). Returns
    ``(cls_targets [T] int64, box_targets [T, 4] float32, num_positives)``; see the module
    docstring for the values. ``M = 0`` gives all background. ``num_positives`` is a Python int
    (one device sync); use :class:`AnchorLabeler` in training loops.
    """
    cls, box, num_pos = AnchorLabeler(anchors, match_threshold, unmatched_threshold, force_match)(
        [gt_boxes], [gt_labels]
    )
    return cls[0], box[0], int(num_pos[0])


class AnchorLabeler:
    """Batched anchor labelling: all images of a batch in one [N, M_max, T] IoU computation.

    ``anchors`` [T, 4] xyxy (e.g. :func:`efficientdet.ops.anchors.anchors_for_config`). Calling it
    with per-image GT lists returns ``(cls_targets [N, T] int64, box_targets [N, T, 4] float32,
    num_positives [N] int64)`` on the device of the anchors. GTs with a negative label are treated
    as padding and ignored (so padded ``[N, M, 4]`` / ``[N, M]`` tensors with label -1 work too).
    Memory: a few [N, M_max, T] float tensors (D0, 8 images, 100 GTs: ~160 MB each).
    """

    def __init__(
        self,
        anchors: Tensor,
        match_threshold: float = 0.5,
        unmatched_threshold: float = 0.5,
        force_match: bool = True,
    ) -> None:
        if anchors.ndim != 2 or anchors.shape[-1] != 4:
            raise ValueError(f"anchors must be [T, 4], got {tuple(anchors.shape)}")
        _check_thresholds(match_threshold, unmatched_threshold)
        self.anchors = anchors.float()
        self.match_threshold = float(match_threshold)
        self.unmatched_threshold = float(unmatched_threshold)
        self.force_match = bool(force_match)

    def to(self, device: torch.device | str) -> AnchorLabeler:
        """Move the anchors (and hence the outputs) to ``device``; returns self."""
        self.anchors = self.anchors.to(device)
        return self

    def __call__(
        self, gt_boxes: Sequence[Tensor] | Tensor, gt_labels: Sequence[Tensor] | Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """gt_boxes: N tensors [M_i, 4] xyxy (or [N, M, 4]); gt_labels: N tensors [M_i] (or [N, M])."""
        boxes, labels, valid = self._pad(gt_boxes, gt_labels)
        batch, num_anchors = boxes.shape[0], self.anchors.shape[0]
        device = self.anchors.device
        if boxes.shape[1] == 0:  # no GT in the whole batch: everything is background
            return (
                torch.full((batch, num_anchors), BACKGROUND, dtype=torch.int64, device=device),
                torch.zeros((batch, num_anchors, 4), dtype=torch.float32, device=device),
                torch.zeros(batch, dtype=torch.int64, device=device),
            )
        # Zeroed padding boxes have IoU 0 with every anchor (see _match).
        iou = batched_anchor_iou(self.anchors, boxes.masked_fill(~valid.unsqueeze(-1), 0.0))
        matches = _match(iou, valid, self.match_threshold, self.unmatched_threshold, self.force_match)
        del iou  # the largest tensor; free it before the [N, T, 4] target work
        return _targets_from_matches(matches, self.anchors, boxes, labels)

    def _pad(
        self, gt_boxes: Sequence[Tensor] | Tensor, gt_labels: Sequence[Tensor] | Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Stack per-image GTs into boxes [N, M_max, 4] float32, labels [N, M_max] int64, valid [N, M_max]."""
        device = self.anchors.device
        if isinstance(gt_boxes, Tensor) and isinstance(gt_labels, Tensor):
            if gt_boxes.ndim != 3 or gt_boxes.shape[-1] != 4 or gt_labels.shape != gt_boxes.shape[:2]:
                raise ValueError(
                    f"padded GTs must be boxes [N, M, 4] and labels [N, M], got "
                    f"{tuple(gt_boxes.shape)} and {tuple(gt_labels.shape)}"
                )
            boxes = gt_boxes.to(device, torch.float32)
            labels = gt_labels.to(device, torch.int64)
            return boxes, labels, labels >= 0
        if len(gt_boxes) != len(gt_labels):
            raise ValueError(f"got {len(gt_boxes)} box tensors but {len(gt_labels)} label tensors")
        for i, (b, lab) in enumerate(zip(gt_boxes, gt_labels)):
            if b.ndim != 2 or b.shape[-1] != 4 or lab.shape != b.shape[:1]:
                raise ValueError(
                    f"image #{i}: need boxes [M, 4] and labels [M], got {tuple(b.shape)}, {tuple(lab.shape)}"
                )
        batch = len(gt_boxes)
        max_gt = max((b.shape[0] for b in gt_boxes), default=0)
        boxes = torch.zeros((batch, max_gt, 4), dtype=torch.float32, device=device)
        labels = torch.full((batch, max_gt), -1, dtype=torch.int64, device=device)
        for i, (b, lab) in enumerate(zip(gt_boxes, gt_labels)):  # one copy per image, not per box
            boxes[i, : b.shape[0]] = b
            labels[i, : lab.shape[0]] = lab
        return boxes, labels, labels >= 0
