"""Official EfficientDet post-processing: top-k, decode, class-wise NMS, top detections, rescale."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from efficientdet.config import PostprocessConfig
from efficientdet.ops.box_coder import decode
from efficientdet.ops.boxes import clip_boxes
from efficientdet.ops.nms import batched_nms, soft_nms

__all__ = ["flatten_outputs", "postprocess", "postprocess_candidates"]


def _check_levels(class_outputs: Sequence[Tensor], box_outputs: Sequence[Tensor], num_classes: int) -> None:
    if len(class_outputs) != len(box_outputs) or not class_outputs:
        raise ValueError(
            f"need the same non-zero number of class and box levels, got {len(class_outputs)} and {len(box_outputs)}"
        )
    for level, (c, b) in enumerate(zip(class_outputs, box_outputs)):
        if c.shape[1] % num_classes or b.shape[1] % 4 or c.shape[1] // num_classes != b.shape[1] // 4:
            raise ValueError(
                f"level {level}: class channels {c.shape[1]} and box channels {b.shape[1]} do not "
                f"match A*{num_classes} and A*4 for one anchor count A"
            )


def flatten_outputs(
    class_outputs: Sequence[Tensor], box_outputs: Sequence[Tensor], num_classes: int
) -> tuple[Tensor, Tensor]:
    """Per-level head outputs -> (cls [N, T, K], box [N, T, 4]) in anchor order.

    class_outputs[l]: [N, A*K, H_l, W_l]; box_outputs[l]: [N, A*4, H_l, W_l]. NHWC then reshape
    makes row index ((y * W + x) * A + a) and channel a*K + k -> class k, matching the anchors.
    """
    _check_levels(class_outputs, box_outputs, num_classes)
    batch = class_outputs[0].shape[0]
    cls_levels = [c.permute(0, 2, 3, 1).reshape(batch, -1, num_classes) for c in class_outputs]
    box_levels = [b.permute(0, 2, 3, 1).reshape(batch, -1, 4) for b in box_outputs]
    return torch.cat(cls_levels, 1), torch.cat(box_levels, 1)


class _Levels:
    """Per-level head outputs read in anchor order without flattening them.

    Flattening copies every logit twice (NHWC transpose, concatenation): T*K values (4.4M at
    D0 512) of which post-processing uses a few thousand. ``amax``, ``at_least`` and ``rows``
    read the [N, A, C, H, W] views of the maps as they are (any strides).
    """

    def __init__(self, outputs: Sequence[Tensor], channels: int) -> None:
        self.views = [o.unflatten(1, (o.shape[1] // channels, channels)) for o in outputs]  # [N, A, C, H, W]
        sizes = [v.shape[1] * v.shape[3] * v.shape[4] for v in self.views]
        self.starts = [sum(sizes[:j]) for j in range(len(sizes))]
        self.total = sum(sizes)

    def amax(self) -> Tensor:
        """Largest channel per anchor -> [N, T]."""
        return torch.cat([_amax_channels(v).permute(0, 2, 3, 1).flatten(1) for v in self.views], 1)

    def at_least(self, i: int, bound: float) -> tuple[Tensor, Tensor, Tensor]:
        """Image ``i``'s values >= ``bound`` -> (values [M], anchor indices [M], channels [M]).

        One streaming comparison per level in the maps' own layout: for NCHW maps, gathering
        whole anchor rows instead would read each row's C values from C different planes.
        """
        values, rows, channels = [], [], []
        for v, start in zip(self.views, self.starts):
            image = v[i]  # [A, C, H, W]
            if _numpy_friendly(image):
                # numpy's compare + flatnonzero is ~2x torch's ge + nonzero on CPU (millions
                # of values, a few thousand hits); both read the strided maps in place.
                # Scan in memory order (channels_last maps are [H, W, A, C] in memory): a
                # logical-order scan would first copy the comparison's result into that order.
                array = image.detach().numpy()
                order = sorted(range(4), key=lambda d: -array.strides[d])
                dense = array.transpose(order)
                hits = np.flatnonzero(dense >= bound)
                coords = [np.empty(0)] * 4
                for axis, index in zip(order, np.unravel_index(hits, dense.shape)):
                    coords[axis] = index
                a, c, y, x = (torch.from_numpy(t) for t in coords)
            else:
                a, c, y, x = (image >= bound).nonzero(as_tuple=True)
            values.append(image[a, c, y, x])
            rows.append(start + (y * image.shape[3] + x) * image.shape[0] + a)  # (y * W + x) * A + a
            channels.append(c)
        return torch.cat(values), torch.cat(rows), torch.cat(channels)

    def rows(self, i: int, anchor_idx: Tensor) -> Tensor:
        """Rows ``anchor_idx`` [R] (any order) of image ``i``'s flattened [T, C] outputs -> [R, C]."""
        v0 = self.views[0]
        out = v0.new_empty(anchor_idx.shape[0], v0.shape[2])
        for v, start in zip(self.views, self.starts):
            image = v[i]  # [A, C, H, W], any strides
            a_count, channels, h, w = image.shape
            local = anchor_idx - start
            mask = (local >= 0) & (local < a_count * h * w)
            local = local[mask]
            # Row (y * W + x) * A + a -> storage offsets of its C values, gathered from a 1-D
            # view of the storage (advanced indexing around a slice copies the whole level).
            sa, sc, sh, sw = image.stride()
            base = (local % a_count) * sa + (local // (a_count * w)) * sh + ((local // a_count) % w) * sw
            offsets = base[:, None] + torch.arange(channels, device=base.device) * sc  # [r, C]
            span = sum((n - 1) * st for n, st in zip(image.shape, image.stride())) + 1
            out[mask] = image.as_strided((span,), (1,))[offsets]
        return out

    def channels_contiguous(self) -> bool:
        """Whether each anchor's C values are adjacent in memory (channels_last, flat layouts)."""
        return all(v.stride(2) == 1 for v in self.views)


def _numpy_friendly(t: Tensor) -> bool:
    return t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64, torch.float16)


def _amax_channels(v: Tensor) -> Tensor:
    """``v.amax(2)`` for [N, A, C, H, W] maps. numpy reduces a strided middle axis 1.5-3x
    faster than torch on CPU (channels_last outputs: torch's generic strided path is slowest)."""
    if _numpy_friendly(v):
        return torch.from_numpy(v.detach().numpy().max(axis=2))
    return v.amax(2)


def postprocess(
    class_outputs: Sequence[Tensor],
    box_outputs: Sequence[Tensor],
    anchors: Tensor,
    config: PostprocessConfig,
    num_classes: int,
    scales: Tensor | None = None,
    image_sizes: Sequence[tuple[int, int]] | None = None,
) -> list[dict[str, Tensor]]:
    """Head outputs -> one dict per image: ``boxes`` [M, 4] float xyxy, ``scores`` [M], ``labels`` [M] int64.

    class_outputs/box_outputs as in :func:`flatten_outputs`; anchors [T, 4] xyxy model-input pixels.
    ``scales`` [N]: model-input size / original size per image, so boxes are divided by it to get
    original pixels; ``image_sizes``: original (h, w) per image to clip to. Labels are 0-based.
    Steps: top ``max_candidates`` of the flattened [T*K] logits, sigmoid, decode, drop scores
    below ``score_threshold``, clip to the image, class-wise hard or soft NMS, top
    ``max_detections``, rescale to original pixels (and clip again, for rounding).
    """
    _check_levels(class_outputs, box_outputs, num_classes)
    cls, box = _Levels(class_outputs, num_classes), _Levels(box_outputs, 4)
    batch, num_anchors = class_outputs[0].shape[0], cls.total
    if anchors.shape[0] != num_anchors:
        raise ValueError(f"head outputs give {num_anchors} anchors but {anchors.shape[0]} anchors were passed")
    scales = _per_image_scales(scales, image_sizes, batch)
    upper = _clip_limits(anchors, scales, image_sizes)
    if class_outputs[0].device.type == "cuda" and config.nms == "hard":
        # GPUs: per-image work is launch- and sync-bound; the batched path gives the same detections
        from efficientdet.inference.postprocess_batched import postprocess_batched

        flat_cls, flat_box = flatten_outputs(class_outputs, box_outputs, num_classes)
        anchors = anchors.to(flat_cls.device, torch.float32)
        return postprocess_batched(flat_cls, flat_box, anchors, config, scales, image_sizes, upper)
    k = min(config.max_candidates, num_anchors * num_classes)
    best = cls.amax()  # [N, T]
    anchors = anchors.to(best.device, torch.float32)

    results: list[dict[str, Tensor]] = []
    for i in range(batch):
        logits, anchor_idx, labels_i = _top_candidates(cls, best[i], i, k, _logit_floor(config.score_threshold))
        codes = box.rows(i, anchor_idx)
        results.append(_detections(logits, anchor_idx, labels_i, codes, anchors, config, i, upper, scales, image_sizes))
    return results


def postprocess_candidates(
    logits: Tensor,
    codes: Tensor,
    anchor_idx: Tensor,
    anchors: Tensor,
    config: PostprocessConfig,
    scales: Tensor | None = None,
    image_sizes: Sequence[tuple[int, int]] | None = None,
) -> list[dict[str, Tensor]]:
    """:func:`postprocess` from pre-selected anchors: the same detections, from ~T/C of the data.

    logits [N, C, K], codes [N, C, 4], anchor_idx [N, C] (any order): the rows of the C anchors
    with the largest per-anchor maximum logit (an ONNX graph exported with ``candidates=True``
    selects them). Exact when ``config.max_candidates`` <= C: the top-k logits over all T*K lie
    in the k anchors with the largest maxima (see :func:`_top_candidates`).
    """
    batch, num_rows, _ = logits.shape
    if config.max_candidates > num_rows and num_rows < anchors.shape[0]:
        raise ValueError(
            f"max_candidates {config.max_candidates} needs that many pre-selected anchors, the graph "
            f"gives {num_rows}; export it with max_candidates >= {config.max_candidates}"
        )
    scales = _per_image_scales(scales, image_sizes, batch)
    upper = _clip_limits(anchors, scales, image_sizes)
    anchors = anchors.to(logits.device, torch.float32)
    k = min(config.max_candidates, num_rows * logits.shape[2])
    min_logit = _logit_floor(config.score_threshold)
    results: list[dict[str, Tensor]] = []
    for i in range(batch):
        values, rows, labels_i = _top_of_rows(logits[i], k, min_logit)
        results.append(
            _detections(
                values, anchor_idx[i, rows], labels_i, codes[i, rows], anchors, config, i, upper, scales, image_sizes
            )
        )
    return results


def _top_of_rows(rows: Tensor, k: int, min_logit: float) -> tuple[Tensor, Tensor, Tensor]:
    """The ``k`` largest values >= ``min_logit`` of ``rows`` [R, K], sorted descending ->
    (values [k'], row indices [k'], columns [k']); as :func:`_top_candidates` for whole rows."""
    best = torch.from_numpy(rows.numpy().max(axis=1)) if _numpy_friendly(rows) else rows.amax(1)  # [R]
    bound = _candidate_bound(best, k, min_logit)
    if _numpy_friendly(rows):
        hits = torch.from_numpy(np.flatnonzero(rows.numpy() >= bound))
        r, columns = hits // rows.shape[1], hits % rows.shape[1]
    else:
        r, columns = (rows >= bound).nonzero(as_tuple=True)
    values, order = _best_first(rows[r, columns], k)
    return values, r[order], columns[order]


def _per_image_scales(
    scales: Tensor | Sequence[float] | None, image_sizes: Sequence[tuple[int, int]] | None, batch: int
) -> Tensor | None:
    """``scales`` as a float32 [N] tensor (or None); both checked to have one entry per image."""
    if scales is not None:
        scales = torch.as_tensor(scales, dtype=torch.float32).reshape(-1)
        if scales.numel() != batch:
            raise ValueError(f"need one scale per image ({batch}), got {scales.numel()}")
    if image_sizes is not None and len(image_sizes) != batch:
        raise ValueError(f"need one image size per image ({batch}), got {len(image_sizes)}")
    return scales


def _candidate_bound(best: Tensor, k: int, min_logit: float) -> float:
    """The value every top-``k`` logit reaches: the k-th largest per-anchor maximum of ``best``
    [R] (see :func:`_top_candidates`), or ``min_logit`` when that is higher."""
    if best.numel() < k:
        return min_logit
    kth = best.min() if best.numel() == k else best.kthvalue(best.numel() - k + 1).values
    return max(min_logit, float(kth))


def _best_first(values: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` largest of ``values`` [M], descending -> (values [min(k, M)], their indices)."""
    if values.numel() > k:
        return values.topk(k)
    return values.sort(descending=True)


def _clip_limits(
    anchors: Tensor, scales: Tensor | None, image_sizes: Sequence[tuple[int, int]] | None
) -> Tensor | None:
    """[N, 4] (w, h, w, h) of each image's region in model-input pixels, or None.

    Boxes are clipped before NMS, in model-input pixels, to the part of the input the image
    covers (the reference does this): overlaps are then measured on the visible parts.
    """
    if image_sizes is None:
        return None
    limits = torch.tensor(image_sizes, dtype=torch.float32, device=anchors.device)  # [N, 2] (h, w)
    if scales is not None:
        limits = limits * scales.to(limits)[:, None]
    return limits.flip(1).repeat(1, 2)


def _detections(
    logits: Tensor,
    anchor_idx: Tensor,
    labels: Tensor,
    codes: Tensor,
    anchors: Tensor,
    config: PostprocessConfig,
    i: int,
    upper: Tensor | None,
    scales: Tensor | None,
    image_sizes: Sequence[tuple[int, int]] | None,
) -> dict[str, Tensor]:
    """Image ``i``'s candidates (logits [k], anchor indices [k], labels [k], box codes [k, 4])
    -> its detections: sigmoid, decode, clip, threshold, NMS, top detections, rescale."""
    boxes = decode(codes.float(), anchors[anchor_idx])  # [k, 4]
    scores = logits.float().sigmoid()
    if upper is not None:
        boxes = torch.minimum(boxes, upper[i].to(boxes)).clamp_(min=0)
    keep = scores >= config.score_threshold
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    if config.nms == "soft":
        kept, scores = soft_nms(boxes, scores, labels, config.soft_nms_sigma, config.score_threshold, config.max_detections)
    elif config.nms == "hard":
        kept = _hard_nms_top(boxes, scores, labels, config.iou_threshold, config.max_detections)
        scores = scores[kept]
    else:
        raise ValueError(f"unknown nms mode {config.nms!r}; expected 'hard' or 'soft'")
    boxes, labels = boxes[kept], labels[kept]
    if scales is not None:
        boxes = boxes / scales[i].to(boxes)
    if image_sizes is not None:
        boxes = clip_boxes(boxes, float(image_sizes[i][0]), float(image_sizes[i][1]))
    return {"boxes": boxes, "scores": scores, "labels": labels.to(torch.int64)}


def _logit_floor(score_threshold: float) -> float:
    """A logit below which no score reaches ``score_threshold`` (with a margin for the float
    rounding of the sigmoid; the exact test on the scores is still made afterwards)."""
    if score_threshold <= 0:
        return -math.inf
    if score_threshold >= 1:
        return math.inf
    return math.log(score_threshold / (1 - score_threshold)) - 1e-3


def _top_candidates(cls: _Levels, best: Tensor, i: int, k: int, min_logit: float) -> tuple[Tensor, Tensor, Tensor]:
    """Image ``i``'s ``k`` largest logits that can pass the score threshold, sorted descending
    -> (logits [k'], anchor indices [k'], labels [k']), k' <= k; ``best`` [T]: its per-anchor
    maxima.

    The same candidates as a top-k over all T*K logits followed by the threshold, without its
    cost (a one-row top-k over millions of values runs on one core and was ~3/4 of
    post-processing at D0 512). If v is the k-th largest per-anchor maximum, k anchors hold a
    logit >= v, so the k-th largest logit is >= v: every top-k logit is >= v and lies in an
    anchor whose maximum is >= v. The values >= v are all we need to rank.
    """
    bound = _candidate_bound(best, k, min_logit)
    if cls.channels_contiguous():
        # Whole rows are cheap to gather here: rank the values of the anchors that can hold one.
        rows = (best >= bound).nonzero().squeeze(1)
        sub = cls.rows(i, rows)  # [R, K]
        r, labels = (sub >= bound).nonzero(as_tuple=True)
        values, anchor_idx = sub[r, labels], rows[r]
    else:
        values, anchor_idx, labels = cls.at_least(i, bound)
    values, order = _best_first(values, k)
    return values, anchor_idx[order], labels[order]


def _hard_nms_top(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float, max_detections: int) -> Tensor:
    """The first ``max_detections`` of class-wise hard NMS's kept indices (score descending).

    Greedy NMS decides on a box from the higher-scoring boxes of its class only, so NMS on the
    P best boxes keeps exactly the full run's kept boxes among them; once that already gives
    ``max_detections`` boxes, nothing after them can enter the result. With the usual 5000
    candidates and 100 detections a prefix of a few hundred boxes mostly suffices, saving
    most of the NMS time (torchvision's loops over ~all classes cost a fixed amount each).
    """
    n = scores.shape[0]
    if max_detections <= 0 or n == 0:
        return torch.empty(0, dtype=torch.int64, device=scores.device)
    order = scores.argsort(descending=True, stable=True)
    size = min(n, 4 * max_detections)
    while True:
        prefix = order[:size]
        kept = batched_nms(boxes[prefix], scores[prefix], labels[prefix], iou_threshold)
        if kept.numel() >= max_detections or size == n:
            return prefix[kept[:max_detections]]
        size = min(n, 4 * size)
