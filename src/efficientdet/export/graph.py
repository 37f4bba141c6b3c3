"""Export-time graph pieces: the batched NMS op and the wrappers that ONNX export traces.

ONNX has a batched, class-wise ``NonMaxSuppression``; torch has no op with its semantics
(``torchvision.ops.nms`` is one image, one class). So we define one as a torch custom op,
``efficientdet::batched_class_nms``, with an eager implementation (torchvision NMS per image and
class, so the wrapper also runs in PyTorch) and a translation to the ONNX op for each exporter:

* ``torch.onnx.export(dynamo=True)`` (torch.export based, the default since torch 2.9): an
  ONNX Script function in ``custom_translation_table`` (:func:`dynamo_translations`);
* ``torch.onnx.export(dynamo=False)`` (TorchScript based, deprecated but ~5x faster to run):
  a symbolic registered with ``torch.onnx.register_custom_op_symbolic``
  (:func:`register_torchscript_symbolic`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from ..inference.protocol import check_score_threshold
from ..ops.box_coder import decode
from ..ops.outputs import flatten_outputs

if TYPE_CHECKING:  # onnxscript is imported only while exporting
    from onnxscript import FLOAT, INT64

__all__ = ["DetectionGraph", "FlatOutputs", "PostprocessGraph", "batched_class_nms"]

_OP = "efficientdet::batched_class_nms"


@torch.library.custom_op(_OP, mutates_args=())
def batched_class_nms(
    boxes: Tensor, scores: Tensor, max_per_class: int, iou_threshold: float, score_threshold: float
) -> Tensor:
    """ONNX ``NonMaxSuppression`` semantics (``center_point_box=0``).

    boxes [N, B, 4] corner boxes, scores [N, C, B] -> selected [S, 3] int64 rows
    (image, class, box), grouped by image then class, each class's boxes in selection order.
    Per image and class: boxes scoring ``> score_threshold`` are greedily kept best first,
    dropping any box with IoU ``> iou_threshold`` with a kept one, at most ``max_per_class``.
    """
    from torchvision.ops import nms

    rows = []
    for n in range(boxes.shape[0]):
        for c in range(scores.shape[1]):
            cand = (scores[n, c] > score_threshold).nonzero().squeeze(1)
            if cand.numel() == 0:
                continue
            kept = cand[nms(boxes[n, cand].float(), scores[n, c, cand].float(), iou_threshold)][:max_per_class]
            rows.append(torch.stack([torch.full_like(kept, n), torch.full_like(kept, c), kept], 1))
    if not rows:
        return torch.empty((0, 3), dtype=torch.int64, device=boxes.device)
    return torch.cat(rows)


@batched_class_nms.register_fake
def _(boxes: Tensor, scores: Tensor, max_per_class: int, iou_threshold: float, score_threshold: float) -> Tensor:
    num_selected = torch.library.get_ctx().new_dynamic_size()  # data-dependent row count
    return boxes.new_empty((num_selected, 3), dtype=torch.int64)


# ``boxes`` and ``scores`` stay unannotated: the exporter reads this function's annotations at
# run time (typing.get_type_hints) to infer the op's ONNX signature.
def _dynamo_nms(boxes, scores, max_per_class: int, iou_threshold: float, score_threshold: float):
    """ONNX Script translation for the torch.export-based exporter."""
    from onnxscript.onnx_opset import opset18 as op

    # Constant is typed as returning any tensor type; its value_* attribute fixes which one.
    return op.NonMaxSuppression(
        boxes,
        scores,
        cast("INT64", op.Constant(value_ints=[max_per_class])),
        cast("FLOAT", op.Constant(value_floats=[iou_threshold])),
        cast("FLOAT", op.Constant(value_floats=[score_threshold])),
        center_point_box=0,
    )


def dynamo_translations() -> dict[Any, Any]:
    """``custom_translation_table`` for ``torch.onnx.export(dynamo=True)``."""
    return {torch.ops.efficientdet.batched_class_nms.default: _dynamo_nms}


_registered_opsets: set[int] = set()


def register_torchscript_symbolic(opset: int) -> None:
    """Teach the TorchScript-based exporter to emit ONNX ``NonMaxSuppression`` for our op."""
    if opset in _registered_opsets:
        return
    from torch.onnx import symbolic_helper

    @symbolic_helper.parse_args("v", "v", "i", "f", "f")
    def symbolic(g, boxes, scores, max_per_class, iou_threshold, score_threshold):
        return g.op(
            "NonMaxSuppression",
            boxes,
            scores,
            g.op("Constant", value_t=torch.tensor([max_per_class], dtype=torch.int64)),
            g.op("Constant", value_t=torch.tensor([iou_threshold], dtype=torch.float32)),
            g.op("Constant", value_t=torch.tensor([score_threshold], dtype=torch.float32)),
            center_point_box_i=0,
        )

    torch.onnx.register_custom_op_symbolic(_OP, symbolic, opset)
    _registered_opsets.add(opset)


class FlatOutputs(nn.Module):
    """The network with flattened outputs: images [N, 3, H, W] -> (cls [N, T, K] logits,
    box [N, T, 4] codes (ty, tx, th, tw)), rows in anchor order (``ops.anchors``)."""

    def __init__(self, model: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.model = model
        self.num_classes = num_classes

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        class_outputs, box_outputs = self.model(images)
        return flatten_outputs(class_outputs, box_outputs, self.num_classes)


class CandidateGraph(nn.Module):
    """Pre-selection for post-processing outside the graph: (cls [N, T, K] logits, box [N, T, 4]
    codes) -> the C anchors with the largest maximum class logit: ``cand_logits`` [N, C, K],
    ``cand_codes`` [N, C, 4], ``cand_anchors`` [N, C] int64 (their rows in anchor order).

    The top-k of all T*K logits (k <= C) lie in these C anchors, so
    :func:`efficientdet.inference.postprocess.postprocess_candidates` gives exactly the detections of the
    full outputs while reading C/T of them (5000 of 49104 anchors at D0 512), and the graph's
    multi-threaded reduction replaces the caller's single-threaded scan of every logit.
    """

    def __init__(self, num_candidates: int) -> None:
        super().__init__()
        self.num_candidates = num_candidates

    def forward(self, cls: Tensor, box: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        batch, num_anchors, num_classes = cls.shape
        # Unsorted: the host ranks the rows itself (sorting them here cost ONNX Runtime ~0.3 ms at D0).
        _, idx = cls.amax(2).topk(self.num_candidates, dim=1, sorted=False)  # [N, C], any order
        # Whole rows of the [N*T, K] view (ONNX Gather on axis 0: one copy of K values per row),
        # not GatherElements, which reads an expanded [N, C, K] index tensor element by element.
        rows = (idx + torch.arange(batch, device=idx.device).unsqueeze(1) * num_anchors).reshape(-1)
        logits = cls.reshape(-1, num_classes).index_select(0, rows).reshape(batch, -1, num_classes)
        codes = box.reshape(-1, 4).index_select(0, rows).reshape(batch, -1, 4)
        return logits, codes, idx


class PostprocessGraph(nn.Module):
    """The official post-processing in ops that export to ONNX.

    (cls [N, T, K] logits, box [N, T, 4] codes) as :class:`FlatOutputs` gives them ->
    ``boxes`` [N, D, 4] float32 xyxy in model-input pixels, ``scores`` [N, D] float32,
    ``labels`` [N, D] int64 (0-based), ``num_detections`` [N] int64. Rows past
    ``num_detections`` are padding: boxes and scores 0, labels -1. Rows are sorted by score.

    Same steps as :func:`efficientdet.inference.postprocess.postprocess` with hard NMS: top
    ``max_candidates`` of the T*K logits, sigmoid, decode, clip, drop scores below
    ``score_threshold``, class-wise NMS, top ``max_detections``. One difference: the graph does
    not know where a letterboxed image ends inside the input, so boxes are clipped to the whole
    input before NMS (``postprocess`` with ``image_sizes`` clips to the image's region).
    """

    anchors: Tensor  # buffers (register_buffer), declared for the type checker
    upper: Tensor

    def __init__(
        self,
        anchors: Tensor,
        num_classes: int,
        image_size: tuple[int, int],
        max_candidates: int,
        score_threshold: float,
        iou_threshold: float,
        max_detections: int,
    ) -> None:
        super().__init__()
        # A graph built with these would answer nothing, ever (threshold above 1, no detections).
        check_score_threshold(score_threshold)
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold {iou_threshold}: must be in (0, 1]")
        if max_detections < 1 or max_candidates < 1:
            raise ValueError(f"max_detections {max_detections} and max_candidates {max_candidates}: must be at least 1")
        self.register_buffer("anchors", anchors.to(torch.float32), persistent=False)  # [T, 4]
        self.num_classes = num_classes
        self.k = min(max_candidates, anchors.shape[0] * num_classes)
        self.max_detections = min(max_detections, self.k)
        self.score_threshold = float(score_threshold)
        self.iou_threshold = float(iou_threshold)
        h, w = image_size
        self.register_buffer("upper", torch.tensor([w, h, w, h], dtype=torch.float32), persistent=False)

    def forward(self, cls: Tensor, box: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        batch = cls.shape[0]
        k, num_classes, d = self.k, self.num_classes, self.max_detections
        logits, flat_idx = cls.reshape(batch, -1).topk(k, dim=1)  # [N, k], best first
        anchor_idx = torch.div(flat_idx, num_classes, rounding_mode="floor")
        labels = flat_idx % num_classes
        codes = box.gather(1, anchor_idx.unsqueeze(-1).expand(-1, -1, 4))
        boxes = decode(codes, self.anchors[anchor_idx])  # [N, k, 4]
        boxes = torch.minimum(boxes, self.upper).clamp(min=0)
        scores = logits.sigmoid()

        # Class-wise NMS on candidates that each belong to one class: a [N, K, k] score table
        # where a candidate scores only in its own class. -1 marks "absent"; with the op's
        # threshold at -0.5 our own ``>= score_threshold`` test decides, exactly as postprocess.
        present = scores >= self.score_threshold
        own_class = labels.unsqueeze(1) == torch.arange(num_classes, device=labels.device).view(1, -1, 1)
        table = torch.where(own_class & present.unsqueeze(1), scores.unsqueeze(1), -1.0)
        # A class never contributes more than D boxes to the top D, so D per class suffices.
        selected = batched_class_nms(boxes, table, d, self.iou_threshold, -0.5)  # [S, 3]
        img, cand = selected[:, 0], selected[:, 2]

        # Kept scores back into a dense [N, k] table (-1 = suppressed), then the top D per image.
        kept = torch.full_like(scores, -1.0).index_put((img, cand), scores[img, cand])
        top_scores, top_idx = kept.topk(d, dim=1)  # [N, D]
        valid = top_scores > -0.5
        num_detections = valid.sum(1)
        out_boxes = boxes.gather(1, top_idx.unsqueeze(-1).expand(-1, -1, 4))
        out_boxes = torch.where(valid.unsqueeze(-1), out_boxes, 0.0)
        out_scores = torch.where(valid, top_scores, 0.0)
        out_labels = torch.where(valid, labels.gather(1, top_idx), -1)
        return out_boxes, out_scores, out_labels, num_detections


class DetectionGraph(nn.Module):
    """Network + :class:`PostprocessGraph`: images [N, 3, H, W] -> (boxes, scores, labels,
    num_detections). The eager twin of an ONNX graph exported with NMS inside."""

    def __init__(self, model: nn.Module, post: PostprocessGraph) -> None:
        super().__init__()
        self.flat = FlatOutputs(model, post.num_classes)
        self.post = post

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.post(*self.flat(images))
