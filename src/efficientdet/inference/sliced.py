"""Sliced inference: overlapping full-resolution tiles plus one whole-image pass, merged.

Small objects in large images vanish when the whole image is shrunk to the model's input.
:class:`SlicedDetector` wraps any :class:`~efficientdet.inference.protocol.ImageDetector`
(``Detector``, ``TTADetector``, ``OnnxDetector``): each image is cut into ``tile`` x ``tile``
windows overlapping by ``overlap`` (the last row and column are moved back to end at the
image border, so every tile is whole), and the tiles plus the whole image go through the
wrapped detector's own stages in batches of its ``batch_size``. Tile boxes are shifted back by
the tile's origin. A tile box reaching within ``edge_margin`` pixels of a tile edge that lies
inside the image is dropped: it is probably a cut object, which the overlap shows whole in a
neighbouring tile (objects up to the overlap minus two margins wide) or the whole-image pass finds (larger
ones). The rest are merged class-wise by hard NMS at the detector's NMS IoU, or by weighted
box fusion, and the ``max_detections`` best are kept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from ..config import PostprocessConfig, PreprocessConfig
from ..data.reduced import DecodedImage, require_full
from ..ops.nms import batched_nms
from .protocol import Detections, ImageDetector, StagedDetector, finish_detections
from .tta import weighted_box_fusion

__all__ = ["TILE_MULTIPLE", "SlicedDetector", "SlicedPrepared", "tile_origins"]

TILE_MULTIPLE = 32  # the backbone's output stride, as --image-size


def tile_origins(size: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of tiles of side ``tile`` covering ``size`` pixels with ``overlap`` (a
    fraction of ``tile``); the last tile ends at ``size``. ``tile <= size``."""
    step = max(1, tile - round(tile * overlap))
    count = max(1, math.ceil((size - tile) / step) + 1)
    return sorted({min(i * step, size - tile) for i in range(count)})


@dataclass
class View:
    """One input of the wrapped detector: image ``index``'s window at (x, y), ``whole`` or a tile."""

    index: int
    x: int
    y: int
    whole: bool
    interior: tuple[bool, bool, bool, bool] = (False, False, False, False)  # left, top, right, bottom


@dataclass
class SlicedPrepared:
    """The views of a batch (``crops`` uint8 [3, h, w] each) and the images' (H, W)."""

    crops: list[Tensor]
    views: list[View]
    image_sizes: list[tuple[int, int]]
    chunks: list[Any] = field(default_factory=list)  # the wrapped detector's prepared chunks


class SlicedDetector(StagedDetector):
    """``detector`` run on overlapping tiles of each image plus the whole image (see module doc).

    ``tile``: tile side in image pixels, a multiple of 32 (use the model's input size to run the
    tiles at full resolution); ``overlap`` in [0, 1); ``merge``: ``"nms"`` or ``"wbf"``;
    ``whole_image``: also run the whole image (finds objects larger than the overlap).
    """

    def __init__(
        self,
        detector: ImageDetector,
        tile: int,
        overlap: float = 0.2,
        merge: Literal["nms", "wbf"] = "nms",
        whole_image: bool = True,
        edge_margin: float = 4.0,
    ) -> None:
        if not isinstance(detector, ImageDetector):  # e.g. the model itself: an AttributeError later
            raise TypeError(
                f"SlicedDetector wraps a detector, got {type(detector).__name__}: SlicedDetector(Detector(model), tile)"
            )
        if tile <= 0 or tile % TILE_MULTIPLE:
            raise ValueError(f"--tile {tile}: must be a positive multiple of the model's stride ({TILE_MULTIPLE})")
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"--tile-overlap {overlap}: must be in [0, 1)")
        if merge not in ("nms", "wbf"):
            raise ValueError(f"unknown merge {merge!r}; expected 'nms' or 'wbf'")
        self.detector, self.tile, self.overlap = detector, int(tile), float(overlap)
        self.merge, self.whole_image, self.edge_margin = merge, bool(whole_image), float(edge_margin)
        self.class_names = detector.class_names
        self.batch_size = detector.batch_size
        self.host_threads = detector.host_threads  # the inner detector's runtime decides

    @property
    def num_classes(self) -> int:
        return self.detector.num_classes

    @property
    def decode_size(self) -> None:
        """None: sliced inference (tiles) works on the full-resolution image (no reduced JPEG decodes)."""
        return None

    @property
    def preprocess_config(self) -> PreprocessConfig:  # type: ignore[override]
        return self.detector.preprocess_config

    @property
    def postprocess_config(self) -> PostprocessConfig:  # type: ignore[override]
        return self.detector.postprocess_config

    def config_with_threshold(self, score_threshold: float | None) -> PostprocessConfig:
        return self.detector.config_with_threshold(score_threshold)  # type: ignore[attr-defined]

    def views_of(self, decoded: Sequence[DecodedImage]) -> SlicedPrepared:
        """Cut every image into tiles (+ the whole image); no model work."""
        crops: list[Tensor] = []
        views: list[View] = []
        sizes: list[tuple[int, int]] = []
        t = self.tile
        for i, image in enumerate(require_full(decoded, "sliced inference (tiles)")):
            h, w = int(image.shape[-2]), int(image.shape[-1])
            if t > h or t > w:
                raise ValueError(f"--tile {t}: larger than image #{i} ({w}x{h} pixels, WxH); use a smaller tile")
            sizes.append((h, w))
            for y in tile_origins(h, t, self.overlap):
                for x in tile_origins(w, t, self.overlap):
                    crops.append(image[:, y : y + t, x : x + t])
                    views.append(View(i, x, y, False, (x > 0, y > 0, x + t < w, y + t < h)))
            if self.whole_image:
                crops.append(image)
                views.append(View(i, 0, 0, True))
        return SlicedPrepared(crops, views, sizes)

    def prepare(self, decoded: Sequence[DecodedImage]) -> SlicedPrepared:
        """Views of the images, prepared by the wrapped detector in chunks of its batch size."""
        prepared = self.views_of(decoded)
        step = max(1, self.detector.batch_size)
        prepared.chunks = [self.detector.prepare(prepared.crops[s : s + step]) for s in range(0, len(prepared.crops), step)]
        return prepared

    def forward(self, prepared: SlicedPrepared) -> list[Any]:
        """The wrapped detector's raw outputs, one per chunk."""
        return [self.detector.forward(chunk) for chunk in prepared.chunks]

    def postprocess(self, outputs: list[Any], prepared: SlicedPrepared, config: PostprocessConfig | None = None) -> Detections:
        """Each chunk post-processed by the wrapped detector, mapped back and merged per image."""
        config = config or self.postprocess_config
        dets: list[dict[str, Any]] = []
        for out, chunk in zip(outputs, prepared.chunks):
            dets += self.detector.postprocess(out, chunk, config)
        return self._merge(dets, prepared, config)

    def detect(self, decoded: Sequence[DecodedImage], config: PostprocessConfig | None = None) -> Detections:
        """As the three stages, one chunk at a time (raw outputs of all tiles are never held at once)."""
        config = config or self.postprocess_config
        prepared = self.views_of(decoded)
        step = max(1, self.detector.batch_size)
        dets: list[dict[str, Any]] = []
        with torch.inference_mode():
            for s in range(0, len(prepared.crops), step):
                dets += self.detector.detect(prepared.crops[s : s + step], config)
        return self._merge(dets, prepared, config)

    def _keep_uncut(self, boxes: Tensor, view: View) -> Tensor:
        """Mask of tile boxes [M, 4] (tile pixels) not touching an interior tile edge."""
        m, t = self.edge_margin, self.tile
        left, top, right, bottom = view.interior
        keep = torch.ones(boxes.shape[0], dtype=torch.bool)
        if left:
            keep &= boxes[:, 0] > m
        if top:
            keep &= boxes[:, 1] > m
        if right:
            keep &= boxes[:, 2] < t - m
        if bottom:
            keep &= boxes[:, 3] < t - m
        return keep

    def _merge(self, dets: list[dict[str, Any]], prepared: SlicedPrepared, config: PostprocessConfig) -> Detections:
        per_image: list[list[tuple[Tensor, Tensor, Tensor]]] = [[] for _ in prepared.image_sizes]
        for det, view in zip(dets, prepared.views):
            boxes, scores, labels = det["boxes"].float(), det["scores"].float(), det["labels"]
            if not view.whole:
                keep = self._keep_uncut(boxes, view)
                shift = torch.tensor([view.x, view.y, view.x, view.y], dtype=boxes.dtype)
                boxes, scores, labels = boxes[keep] + shift, scores[keep], labels[keep]
            per_image[view.index].append((boxes, scores, labels))
        results = []
        for parts in per_image:
            boxes = torch.cat([p[0] for p in parts])
            scores = torch.cat([p[1] for p in parts])
            labels = torch.cat([p[2] for p in parts]).to(torch.int64)
            if self.merge == "wbf":
                boxes, scores, labels = weighted_box_fusion(boxes, scores, labels, config.iou_threshold)
            else:
                kept = batched_nms(boxes, scores, labels, config.iou_threshold)
                boxes, scores, labels = boxes[kept], scores[kept], labels[kept]
            top = config.max_detections
            results.append({"boxes": boxes[:top], "scores": scores[:top], "labels": labels[:top]})
        return finish_detections(results, self.class_names)
