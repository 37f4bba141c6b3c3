"""Candidate selection for post-processing: the top-k logits of an image without a top-k over
all of its T*K logits, read from the per-level maps as they are (no flattening copy)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["LevelOutputs", "best_first", "candidate_bound", "logit_floor", "numpy_friendly", "top_candidates", "top_of_rows"]


class LevelOutputs:
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
        return torch.cat([amax_channels(v).permute(0, 2, 3, 1).flatten(1) for v in self.views], 1)

    def at_least(self, i: int, bound: float) -> tuple[Tensor, Tensor, Tensor]:
        """Image ``i``'s values >= ``bound`` -> (values [M], anchor indices [M], channels [M]).

        One streaming comparison per level in the maps' own layout: for NCHW maps, gathering
        whole anchor rows instead would read each row's C values from C different planes.
        """
        values, rows, channels = [], [], []
        for v, start in zip(self.views, self.starts):
            image = v[i]  # [A, C, H, W]
            if numpy_friendly(image):
                # numpy's compare + flatnonzero is ~2x torch's ge + nonzero on CPU (millions
                # of values, a few thousand hits); both read the strided maps in place.
                # Scan in memory order (channels_last maps are [H, W, A, C] in memory): a
                # logical-order scan would first copy the comparison's result into that order.
                array = image.detach().numpy()
                order = sorted(range(4), key=lambda d: -array.strides[d])
                dense = array.transpose(order)
                hits = np.flatnonzero(dense >= bound)
                coords: list[np.ndarray] = [np.empty(0)] * 4  # every axis is filled in below
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


def numpy_friendly(t: Tensor) -> bool:
    return t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64, torch.float16)


# Up to this many adjacent channels, torch's reduction beats numpy's (see amax_channels).
_TORCH_ADJACENT_CHANNELS = 16


def amax_channels(v: Tensor) -> Tensor:
    """``v.amax(2)`` for [N, A, C, H, W] maps, by whichever library reduces that layout faster
    on a CPU. numpy reduces a strided channel axis 1.5-3x faster than torch, and adjacent
    channels (channels_last maps, ONNX's flat [N, T, C] outputs) when C is large (COCO's 90);
    but for a few adjacent channels it runs one short inner loop per anchor, ~10x slower than
    torch (a fine-tuned model with 2-16 classes: ~2 ms instead of ~0.2-1 ms at D0 512)."""
    if not numpy_friendly(v) or (v.shape[2] > 1 and v.stride(2) == 1 and v.shape[2] <= _TORCH_ADJACENT_CHANNELS):
        return v.amax(2)
    return torch.from_numpy(v.detach().numpy().max(axis=2))


def logit_floor(score_threshold: float) -> float:
    """A logit below which no score reaches ``score_threshold`` (with a margin for the float
    rounding of the sigmoid; the exact test on the scores is still made afterwards)."""
    if score_threshold <= 0:
        return -math.inf
    if score_threshold >= 1:
        return math.inf
    return math.log(score_threshold / (1 - score_threshold)) - 1e-3


def candidate_bound(best: Tensor, k: int, min_logit: float) -> float:
    """A value every top-``k`` logit above ``min_logit`` reaches: the k-th largest per-anchor
    maximum of ``best`` [R] (see :func:`top_candidates`), or ``min_logit`` when that is higher
    or when at most ``k`` anchors reach it (then the threshold alone keeps the set small)."""
    if best.numel() < k:
        return min_logit
    if best.numel() == k:  # the pre-selected rows of a candidates graph (k = max_candidates)
        return max(min_logit, float(best.min()))
    if min_logit > -math.inf and int((best >= min_logit).sum()) < k:
        # Fewer than k anchors can pass the threshold (predict's 0.3: a handful): the k-th value
        # is below it, so the threshold is the bound, and that selection over all T maxima
        # (~0.6 ms at D0) is not needed.
        return min_logit
    return max(min_logit, float(best.kthvalue(best.numel() - k + 1).values))


def best_first(values: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` largest of ``values`` [M], descending -> (values [min(k, M)], their indices)."""
    if values.numel() > k:
        return values.topk(k)
    return values.sort(descending=True)


def top_candidates(cls: LevelOutputs, best: Tensor, i: int, k: int, min_logit: float) -> tuple[Tensor, Tensor, Tensor]:
    """Image ``i``'s ``k`` largest logits that can pass the score threshold, sorted descending
    -> (logits [k'], anchor indices [k'], labels [k']), k' <= k; ``best`` [T]: its per-anchor
    maxima.

    The same candidates as a top-k over all T*K logits followed by the threshold, without its
    cost (a one-row top-k over millions of values runs on one core and was ~3/4 of
    post-processing at D0 512). If v is the k-th largest per-anchor maximum, k anchors hold a
    logit >= v, so the k-th largest logit is >= v: every top-k logit is >= v and lies in an
    anchor whose maximum is >= v. The values >= v are all we need to rank.
    """
    bound = candidate_bound(best, k, min_logit)
    if cls.channels_contiguous():
        # Whole rows are cheap to gather here: rank the values of the anchors that can hold one.
        rows = (best >= bound).nonzero().squeeze(1)
        sub = cls.rows(i, rows)  # [R, K]
        r, labels = (sub >= bound).nonzero(as_tuple=True)
        values, anchor_idx = sub[r, labels], rows[r]
    else:
        values, anchor_idx, labels = cls.at_least(i, bound)
    values, order = best_first(values, k)
    return values, anchor_idx[order], labels[order]


def top_of_rows(rows: Tensor, k: int, min_logit: float) -> tuple[Tensor, Tensor, Tensor]:
    """The ``k`` largest values >= ``min_logit`` of ``rows`` [R, K], sorted descending ->
    (values [k'], row indices [k'], columns [k']); as :func:`top_candidates` for whole rows."""
    best = torch.from_numpy(rows.numpy().max(axis=1)) if numpy_friendly(rows) else rows.amax(1)  # [R]
    bound = candidate_bound(best, k, min_logit)
    if numpy_friendly(rows):
        hits = torch.from_numpy(np.flatnonzero(rows.numpy() >= bound))
        r, columns = hits // rows.shape[1], hits % rows.shape[1]
    else:
        r, columns = (rows >= bound).nonzero(as_tuple=True)
    values, order = best_first(rows[r, columns], k)
    return values, r[order], columns[order]
