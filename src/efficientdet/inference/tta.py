"""Test-time augmentation: horizontal flip and multi-scale inputs, merged by NMS or box fusion.

Each image is run as several *views* (the original and its mirror, at each input size); every
view is post-processed as usual (decode, class-wise NMS, top detections) into the image's own
pixels, mirrored boxes are mirrored back, and the candidates of all views are merged:

* ``merge="nms"``: class-wise NMS over all candidates (hard, or Gaussian soft-NMS when the
  detector's ``PostprocessConfig.nms`` is ``"soft"``);
* ``merge="wbf"``: :func:`weighted_box_fusion`, which averages the views' boxes instead of
  keeping one of them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from efficientdet.ops.anchors import anchors_for_config
from efficientdet.ops.boxes import box_iou, clip_boxes
from efficientdet.ops.nms import batched_nms, soft_nms

from ..config import PostprocessConfig, PreprocessConfig
from ..data.reduced import DecodedImage, require_full
from .detector import Detector
from .postprocess import postprocess
from .preprocess import preprocess_batch
from .protocol import Detections, Prepared, StagedDetector, finish_detections

__all__ = ["TTADetector", "weighted_box_fusion"]

MergeMode = Literal["nms", "wbf"]


def weighted_box_fusion(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    iou_threshold: float = 0.55,
    num_views: int = 1,
) -> tuple[Tensor, Tensor, Tensor]:
    """Weighted box fusion (Solovyev et al. 2021), class-wise, vectorised.

    boxes [N, 4] xyxy, scores [N], labels [N] (candidates of ``num_views`` views/models
    together) -> (fused boxes [C, 4], scores [C], labels [C]), sorted by score descending.

    Clusters: the cluster *leaders* are the boxes class-wise hard NMS keeps at
    ``iou_threshold``; every other box joins the same-class leader it overlaps most (it has
    one above the threshold: the leader that suppressed it). Per cluster, with member scores
    s_i and boxes b_i::

        box   = sum(s_i * b_i) / sum(s_i)
        score = mean(s_i) * min(n, num_views) / num_views

    so a box found by only some views is down-weighted. The reference implementation matches
    each box, in score order, against the *running* fused boxes; matching against the leaders
    instead makes the whole thing one NMS plus one [N, C] IoU and scatter-adds, with no Python
    loop. The two agree whenever a cluster's members overlap its leader and fused box alike
    (the usual case: views of one object).
    """
    if num_views < 1:
        raise ValueError(f"num_views must be >= 1, got {num_views}")
    n = boxes.shape[0]
    if n == 0:
        return boxes.new_zeros((0, 4)), scores.new_zeros(0), labels.new_zeros(0)
    boxes, scores = boxes.float(), scores.float()
    leaders = batched_nms(boxes, scores, labels, iou_threshold)  # [C], by score descending
    same_class = labels[:, None] == labels[leaders][None, :]  # [N, C]
    iou = box_iou(boxes, boxes[leaders]) * same_class  # other classes never match: IoU 0
    # A leader's best match is itself (IoU 1); ties between leaders go to the first, i.e. the
    # higher-scored one, as argmax returns the first maximum.
    iou[leaders, torch.arange(leaders.numel(), device=boxes.device)] = 2.0
    cluster = iou.argmax(1)  # [N] -> leader slot
    c = leaders.numel()
    weight_sum = scores.new_zeros(c).index_add_(0, cluster, scores)
    fused = boxes.new_zeros((c, 4)).index_add_(0, cluster, boxes * scores[:, None])
    fused = fused / weight_sum.clamp(min=torch.finfo(scores.dtype).tiny)[:, None]
    count = torch.bincount(cluster, minlength=c).to(scores.dtype)
    fused_scores = weight_sum / count * count.clamp(max=num_views) / num_views
    order = fused_scores.argsort(descending=True, stable=True)
    return fused[order], fused_scores[order], labels[leaders][order]


@dataclass
class TTAPrepared:
    """The views of a batch of n images: one :class:`Prepared` per input size, each holding the
    n images (and their n mirrors when flipping); ``widths`` [n] the originals' widths."""

    views: list[Prepared]
    widths: Tensor
    image_sizes: list[tuple[int, int]]


class TTADetector(StagedDetector):
    """A :class:`Detector` with test-time augmentation; called exactly like a Detector.

    ``flips``: also run the mirrored image. ``scales``: input sizes as factors of the model's
    (each side rounded to a multiple of the model's size divisor, 32; equal sizes deduplicated).
    ``merge``: ``"nms"`` or ``"wbf"`` (see the module doc). ``iou_threshold``: the merge's IoU
    (default: the detector's NMS IoU for ``"nms"``, 0.55 for ``"wbf"``). Cost: one forward per
    (scale, flip) view; all images of a batch and both flips share each forward.
    """

    def __init__(
        self,
        detector: Detector,
        flips: bool = True,
        scales: Sequence[float] = (1.0,),
        merge: MergeMode = "nms",
        iou_threshold: float | None = None,
    ) -> None:
        if not isinstance(detector, Detector):  # e.g. the model itself: an AttributeError later
            raise TypeError(f"TTADetector wraps a Detector, got {type(detector).__name__}: TTADetector(Detector(model))")
        if merge not in ("nms", "wbf"):
            raise ValueError(f"unknown merge {merge!r}; expected 'nms' or 'wbf'")
        if not scales or any(s <= 0 for s in scales):
            raise ValueError(f"scales must be positive factors, got {tuple(scales)}")
        self.detector = detector
        self.flips = bool(flips)
        self.merge = merge
        self.iou_threshold = iou_threshold
        divisor = int(getattr(detector.model, "size_divisor", 32))
        base_h, base_w = detector.config.image_size

        def side(v: float) -> int:
            return max(divisor, round(v / divisor) * divisor)

        self.sizes: list[tuple[int, int]] = list(dict.fromkeys((side(base_h * s), side(base_w * s)) for s in scales))
        self._anchors: dict[tuple[int, int], Tensor] = {}

    @property
    def config(self) -> Any:
        return self.detector.config

    @property
    def model(self) -> Any:
        return self.detector.model

    @property
    def device(self) -> torch.device:
        return self.detector.device

    @property
    def class_names(self) -> list[str] | None:  # type: ignore[override]
        return self.detector.class_names

    @property
    def batch_size(self) -> int:  # type: ignore[override]
        return self.detector.batch_size

    @property
    def decode_size(self) -> None:
        """None: test-time augmentation (flips, sizes) works on the full-resolution image (no reduced JPEG decodes)."""
        return None

    @property
    def preprocess_config(self) -> PreprocessConfig:  # type: ignore[override]
        return self.detector.preprocess_config

    @property
    def num_classes(self) -> int:
        return self.detector.num_classes

    @property
    def postprocess_config(self) -> PostprocessConfig:  # type: ignore[override]
        return self.detector.postprocess_config

    @property
    def num_views(self) -> int:
        return len(self.sizes) * (2 if self.flips else 1)

    def _anchors_for(self, size: tuple[int, int]) -> Tensor:
        if size not in self._anchors:
            self._anchors[size] = anchors_for_config(self.config.anchors, size).to(self.device)
        return self._anchors[size]

    def prepare(self, decoded: Sequence[DecodedImage]) -> TTAPrepared:
        """uint8 [3, H_i, W_i] images -> every (size, flip) view, batched per input size."""
        images = require_full(decoded, "test-time augmentation (flips, sizes)")
        views = images + [im.flip(-1) for im in images] if self.flips else images
        prepared = []
        for size in self.sizes:
            pre = dataclasses.replace(self.config.preprocess, image_size=size)
            batch, scales, sizes = preprocess_batch(views, pre)
            prepared.append(Prepared(batch.to(self.device), scales.to(self.device), sizes))
        widths = torch.tensor([float(im.shape[-1]) for im in images], device=self.device)  # [n]
        return TTAPrepared(prepared, widths, [(int(im.shape[1]), int(im.shape[2])) for im in images])

    def forward(self, prepared: TTAPrepared) -> list[Any]:
        """One forward per input size (all images and both flips together)."""
        return [self.detector.forward(view) for view in prepared.views]

    def postprocess(self, outputs: list[Any], prepared: TTAPrepared, config: PostprocessConfig | None = None) -> Detections:
        """Every view's detections, mirrored back, merged per image (see the module doc)."""
        post = config or self.postprocess_config
        n = len(prepared.image_sizes)
        per_image: list[list[dict[str, Tensor]]] = [[] for _ in range(n)]
        for size, view, (class_out, box_out) in zip(self.sizes, prepared.views, outputs):
            dets = postprocess(
                class_out, box_out, self._anchors_for(size), post, num_classes=self.config.num_classes,
                scales=view.scales, image_sizes=view.image_sizes,
            )  # fmt: skip
            for v, det in enumerate(dets):
                i = v % n
                if v >= n:  # mirrored view: x -> W - x (and x0/x1 swap roles)
                    b, width = det["boxes"], prepared.widths[i]
                    det = dict(det, boxes=torch.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], 1))
                per_image[i].append(det)
        merged: list[dict[str, Tensor]] = []
        for (h, w), dets in zip(prepared.image_sizes, per_image):
            boxes = torch.cat([d["boxes"] for d in dets])
            scores = torch.cat([d["scores"] for d in dets])
            labels = torch.cat([d["labels"] for d in dets])
            boxes, scores, labels = self._merge(boxes, scores, labels, post)
            merged.append({"boxes": clip_boxes(boxes, float(h), float(w)), "scores": scores, "labels": labels})
        return finish_detections(merged, self.class_names)

    def _merge(self, boxes: Tensor, scores: Tensor, labels: Tensor, post: Any) -> tuple[Tensor, Tensor, Tensor]:
        """All views' candidates of one image -> final (boxes, scores, labels), best first."""
        if self.merge == "wbf":
            iou = self.iou_threshold if self.iou_threshold is not None else 0.55
            boxes, scores, labels = weighted_box_fusion(boxes, scores, labels, iou, self.num_views)
            keep = (scores >= post.score_threshold).nonzero().squeeze(1)[: post.max_detections]
            return boxes[keep], scores[keep], labels[keep]
        if post.nms == "soft":
            keep, scores = soft_nms(boxes, scores, labels, post.soft_nms_sigma, post.score_threshold, post.max_detections)
            return boxes[keep], scores, labels[keep]
        iou = self.iou_threshold if self.iou_threshold is not None else post.iou_threshold
        keep = batched_nms(boxes, scores, labels, iou)[: post.max_detections]
        return boxes[keep], scores[keep], labels[keep]
