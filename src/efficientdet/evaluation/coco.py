"""COCO box evaluation through pycocotools' official protocol.

Boxes are xyxy float pixels everywhere in the library; they become COCO ``[x, y, w, h]`` only
here, when the ground truth and the results JSON are written. The matching, accumulation and
summary are pycocotools' own (``COCOeval``), so the numbers are the official ones.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..fs import atomic_open

# Re-exported so the whole evaluation API is reachable from this module too.
from .plots import plot_precision_recall
from .voc import voc_ap50

__all__ = [
    "STAT_NAMES",
    "CocoEvaluator",
    "CocoGroundTruth",
    "EvalResult",
    "gt_list_to_coco",
    "plot_precision_recall",
    "stat_text",
    "voc_ap50",
]

# The order of COCOeval.stats after summarize() for iouType "bbox".
STAT_NAMES: tuple[str, ...] = (
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)  # fmt: skip

# A COCO annotation file, its loaded dict, or a ready pycocotools COCO object.
CocoGroundTruth: TypeAlias = str | os.PathLike | Mapping[str, Any] | COCO  # explicit: COCO is untyped (Any) to mypy
ArrayLike = torch.Tensor | np.ndarray | Sequence[float]


def _np(x: ArrayLike | None, dtype: type, shape_tail: tuple[int, ...] = ()) -> np.ndarray:
    """Tensor / array / list -> numpy of ``dtype`` reshaped to ``[-1, *shape_tail]``."""
    if x is None:
        return np.zeros((0, *shape_tail), dtype=dtype)
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype).reshape(-1, *shape_tail)


@contextlib.contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    """Swallow pycocotools' progress prints unless ``verbose``."""
    if verbose:
        yield
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            yield


def _unique_names(names: Sequence[str], ids: Sequence[int]) -> list[str]:
    """Names usable as dict keys: a repeated name gets its category id appended."""
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    return [n if counts[n] == 1 else f"{n} ({i})" for n, i in zip(names, ids)]


def gt_list_to_coco(
    gts: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    category_ids: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Per-image GT dicts (xyxy ``boxes`` [M, 4], 0-based ``labels`` [M]) -> a COCO GT dict.

    Optional per-image keys: ``iscrowd`` [M], ``area`` [M] (default box w*h), ``height``,
    ``width``. Label ``l`` becomes category ``category_ids[l]`` (default ``l + 1``).
    """
    n_cls = len(class_names)
    cat_ids = list(category_ids) if category_ids is not None else list(range(1, n_cls + 1))
    if len(cat_ids) != len(class_names):
        raise ValueError(f"{len(cat_ids)} category ids for {len(class_names)} class names")
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    seen: set[int] = set()
    for gt in gts:
        image_id = int(gt["image_id"])
        if image_id in seen:
            raise ValueError(f"image id {image_id} appears twice in the ground truth")
        seen.add(image_id)
        image: dict[str, Any] = {"id": image_id}
        for key in ("height", "width"):
            if gt.get(key) is not None:
                image[key] = int(gt[key])
        images.append(image)
        boxes = _np(gt["boxes"], np.float64, (4,))
        labels = _np(gt["labels"], np.int64)
        n = len(boxes)
        crowd = gt.get("iscrowd")
        iscrowd = _np(crowd, np.int64) if crowd is not None else np.zeros(n, np.int64)
        wh = boxes[:, 2:] - boxes[:, :2]
        area = _np(gt["area"], np.float64) if gt.get("area") is not None else wh[:, 0] * wh[:, 1]
        if not (len(labels) == len(iscrowd) == len(area) == n):
            raise ValueError(f"image {image_id}: boxes, labels, iscrowd, area lengths differ")
        if n and (labels.min() < 0 or labels.max() >= len(cat_ids)):
            raise ValueError(f"image {image_id}: labels must be in [0, {len(cat_ids)})")
        for j in range(n):
            anns.append({
                "id": len(anns) + 1,  # COCOeval uses id 0 for "unmatched", so ids start at 1
                "image_id": image_id,
                "category_id": cat_ids[labels[j]],
                "bbox": [float(boxes[j, 0]), float(boxes[j, 1]), float(wh[j, 0]), float(wh[j, 1])],
                "area": float(area[j]),
                "iscrowd": int(iscrowd[j]),
            })  # fmt: skip
    categories = [{"id": c, "name": str(n)} for c, n in zip(cat_ids, class_names)]
    return {"images": images, "annotations": anns, "categories": categories}


def stat_text(value: float, difference: bool = False) -> str:
    """A COCO stat as the tables print it: ``0.601``, or ``-`` where there is nothing to measure
    (NaN, or COCO's -1 for an area range without ground truth, which read "all -1.000" in the
    table, one column wide of the rest). ``difference``: a signed ``+0.017``, the value of
    ``first - second``; pass NaN when either side is absent."""
    if math.isnan(value) or (value < 0 and not difference):
        return "-"
    return f"{value:+.3f}" if difference else f"{value:.3f}"


def _is_id(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _scorable(ann: Any) -> bool:
    """Whether a ground-truth annotation has integer image and category ids and a ``bbox`` of
    4 finite numbers."""
    if not isinstance(ann, dict) or not (_is_id(ann.get("image_id")) and _is_id(ann.get("category_id"))):
        return False
    bbox = ann.get("bbox")
    return (
        isinstance(bbox, list) and len(bbox) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)
    )  # fmt: skip


def _coco_from_dict(dataset: dict[str, Any], verbose: bool) -> COCO:
    """A pycocotools COCO object over ``dataset`` (not copied)."""
    # pycocotools 2.0.10's loadRes copies dataset["info"] and raises KeyError without it; the
    # COCO format marks "info" optional in practice (many exported JSONs have none)
    dataset.setdefault("info", {})
    coco = COCO()
    coco.dataset = dataset
    with _quiet(verbose):
        coco.createIndex()
    return coco


@dataclass
class EvalResult:
    """COCO box metrics.

    ``stats`` holds COCOeval.stats by name (:data:`STAT_NAMES`); like COCO, a stat whose area
    range has no ground truth is ``-1``. ``per_class_ap`` / ``per_class_ap50`` are the AP over
    IoU .50:.95 / at IoU .50 per category (area all, 100 detections), ``NaN`` for a category
    without non-crowd ground truth, so ``nanmean(per_class_ap) == stats["AP"]``.
    """

    stats: dict[str, float]
    per_class_ap: dict[str, float]
    per_class_ap50: dict[str, float]
    precision: np.ndarray  # COCOeval.eval["precision"]: [T, R, K, A, M], -1 where absent
    recall: np.ndarray  # COCOeval.eval["recall"]: [T, K, A, M]
    iou_thresholds: np.ndarray  # [T]
    recall_thresholds: np.ndarray  # [R]
    class_names: list[str]  # [K], the order of the K axis (categories by ascending id)
    category_ids: list[int]  # [K]
    num_gt: dict[str, int] = field(default_factory=dict)  # non-crowd GT boxes per class

    def table(self) -> str:
        """Per-class table (AP, AP50, #GT) with the COCO summary line underneath."""
        width = max([len("class"), *(min(len(n), 40) for n in self.class_names)])
        fmt = lambda v: stat_text(v).rjust(5)  # noqa: E731
        lines = [f"{'class':<{width}}     AP   AP50    #GT", "-" * (width + 21)]
        for name in self.class_names:
            ap, ap50 = self.per_class_ap[name], self.per_class_ap50[name]
            n_gt = self.num_gt.get(name, 0)
            lines.append(f"{name[:40]:<{width}}  {fmt(ap)}  {fmt(ap50)}  {n_gt:5d}")
        lines.append("-" * (width + 21))
        lines.append(f"{'all':<{width}}  {fmt(self.stats['AP'])}  {fmt(self.stats['AP50'])}  "
                     f"{sum(self.num_gt.values()):5d}")  # fmt: skip
        lines.append("  ".join(f"{k}={v:.3f}" for k, v in self.stats.items()))
        return "\n".join(lines)


class CocoEvaluator:
    """Accumulates Detector outputs and scores them with pycocotools' COCOeval (bbox).

    Ground truth is a COCO annotation file / dict / ``COCO`` object, or a list of per-image
    dicts ``{"image_id", "boxes" [M, 4] xyxy, "labels" [M] 0-based, optional "iscrowd",
    "area", "height", "width"}`` together with ``class_names``. A detection label ``l`` maps
    to category ``category_ids[l]``, by default ``l + 1`` (the layout of the 90-class COCO
    weights); detections whose category is not in the ground truth are ignored by COCOeval.
    """

    def __init__(
        self,
        gt: CocoGroundTruth | Sequence[Mapping[str, Any]],
        class_names: Sequence[str] | None = None,
        category_ids: Sequence[int] | None = None,
        *,
        verbose: bool = False,
    ) -> None:
        self.verbose = verbose
        is_list = not isinstance(gt, (COCO, str, os.PathLike, Mapping))
        if class_names is not None and not is_list:
            raise ValueError("class_names is only for list GT; COCO GT names its own categories")
        if isinstance(gt, COCO):
            dataset: dict[str, Any] = copy.deepcopy(gt.dataset)
        elif isinstance(gt, (str, os.PathLike)):
            with open(gt) as f:
                dataset = json.load(f)
        elif isinstance(gt, Mapping):
            dataset = copy.deepcopy(dict(gt))  # COCOeval writes "ignore" into GT annotations
        else:
            if class_names is None:
                raise ValueError("class_names is required when ground truth is a list of dicts")
            dataset = gt_list_to_coco(gt, class_names, category_ids)
        # What read_coco skips with a warning, COCOeval cannot score (KeyError 'bbox', 'id',
        # 'category_id'): annotations without a box of 4 numbers (segmentation-only) or ids,
        # images and categories without an id.
        dataset["annotations"] = [a for a in dataset.get("annotations", []) if _scorable(a)]
        for key in ("images", "categories"):
            dataset[key] = [e for e in dataset.get(key, []) if isinstance(e, dict) and _is_id(e.get("id"))]
        for i, ann in enumerate(dataset["annotations"], 1):
            # COCOeval keys annotations by id (a repeated id scores one box twice, the other not
            # at all) and marks "unmatched" with id 0 (a box with id 0, as Roboflow's exports
            # start, could never be found): numbered 1..N; the ids mean nothing to the metrics.
            ann["id"] = i
            # Fields COCOeval reads but hand-written COCO dicts often omit.
            ann.setdefault("iscrowd", 0)
            ann.setdefault("area", float(ann["bbox"][2] * ann["bbox"][3]))
        self.coco_gt = _coco_from_dict(dataset, verbose)
        self._gt_image_ids = set(self.coco_gt.getImgIds())
        if category_ids is not None:
            self.category_ids: np.ndarray | None = np.asarray(list(category_ids), dtype=np.int64)
        else:
            self.category_ids = None  # label + 1
        self._results: dict[int, list[dict[str, Any]]] = {}

    @property
    def image_ids(self) -> list[int]:
        """Image ids passed to :meth:`update` so far, in order."""
        return list(self._results)

    def reset(self) -> None:
        """Forget all detections (the ground truth stays)."""
        self._results.clear()

    def _to_results(self, image_id: int, det: Mapping[str, ArrayLike]) -> list[dict[str, Any]]:
        """One image's Detector output -> COCO result dicts (xywh, category_id, score)."""
        boxes = _np(det["boxes"], np.float64, (4,))
        scores = _np(det["scores"], np.float64)
        labels = _np(det["labels"], np.int64)
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(f"image {image_id}: boxes, scores, labels lengths differ")
        if self.category_ids is None:
            cats = labels + 1
        else:
            if len(labels) and (labels.min() < 0 or labels.max() >= len(self.category_ids)):
                n_cls = len(self.category_ids)
                raise ValueError(f"image {image_id}: labels must be in [0, {n_cls})")
            cats = self.category_ids[labels]
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        return [
            {"image_id": image_id, "category_id": int(c), "bbox": b, "score": float(s)}
            for b, s, c in zip(xywh.tolist(), scores.tolist(), cats.tolist())
        ]

    def update(
        self, image_ids: Sequence[int], detections: Sequence[Mapping[str, ArrayLike]]
    ) -> None:
        """Add detections (``boxes`` [M, 4] xyxy, ``scores`` [M], ``labels`` [M]) per image.

        Raises ``ValueError`` naming image ids that are not in the ground truth or that were
        already added (adding twice would silently double-count detections).
        """
        ids = [int(i) for i in image_ids]
        if len(ids) != len(detections):
            raise ValueError(f"{len(ids)} image ids for {len(detections)} detection dicts")
        unknown = sorted({i for i in ids if i not in self._gt_image_ids})
        if unknown:
            raise ValueError(f"image ids not in the ground truth: {unknown[:50]}")
        repeated = sorted({i for i in ids if i in self._results or ids.count(i) > 1})
        if repeated:
            raise ValueError(f"image ids already updated: {repeated[:50]}")
        converted = [self._to_results(i, d) for i, d in zip(ids, detections)]
        for i, res in zip(ids, converted):
            self._results[i] = res

    def results_json(self) -> list[dict[str, Any]]:
        """All detections in the COCO results format (fresh dicts; bbox is xywh pixels)."""
        return [dict(r, bbox=list(r["bbox"])) for res in self._results.values() for r in res]

    def save_results(self, path: str | os.PathLike) -> Path:
        """Write :meth:`results_json` to ``path`` (for the COCO test-dev server, say)."""
        path = Path(path)
        with atomic_open(path, "w", encoding="utf-8") as f:
            json.dump(self.results_json(), f)
        return path

    def _load_results(self) -> COCO:
        """Detections as a COCO object; loadRes itself crashes on an empty list."""
        results = self.results_json()  # loadRes mutates its input, hence fresh dicts
        with _quiet(self.verbose):
            if results:
                return self.coco_gt.loadRes(results)
            empty = {
                "images": list(self.coco_gt.dataset["images"]),
                "categories": copy.deepcopy(self.coco_gt.dataset["categories"]),
                "annotations": [],
            }
            return _coco_from_dict(empty, self.verbose)

    def compute(self, image_ids: Iterable[int] | None = None) -> EvalResult:
        """Run COCOeval (evaluate, accumulate, summarize) and collect the metrics.

        By default every ground-truth image counts, as in the official protocol: an image
        never passed to :meth:`update` has its objects missed. Pass ``image_ids`` (e.g.
        ``self.image_ids``) to score a subset.
        """
        coco_eval = COCOeval(self.coco_gt, self._load_results(), "bbox")
        if image_ids is not None:
            ids = sorted({int(i) for i in image_ids})
            if not ids or not set(ids) <= self._gt_image_ids:
                raise ValueError("image_ids must be a non-empty subset of the ground-truth images")
            coco_eval.params.imgIds = ids
        with _quiet(self.verbose):
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        return self._collect(coco_eval)

    def _collect(self, coco_eval: COCOeval) -> EvalResult:
        """EvalResult from a summarized COCOeval."""
        params = coco_eval.params
        precision = np.asarray(coco_eval.eval["precision"])  # [T, R, K, A, M]
        cat_ids = [int(c) for c in params.catIds]
        cats = self.coco_gt.cats
        names = _unique_names([str(cats[c].get("name", c)) for c in cat_ids], cat_ids)
        # Area "all" and the largest maxDets (100), as COCOeval's headline AP uses.
        a = params.areaRngLbl.index("all")
        m = int(np.argmax(params.maxDets))
        t50 = int(np.flatnonzero(np.isclose(params.iouThrs, 0.5))[0])

        def mean_valid(p: np.ndarray) -> float:
            # COCO's summarize: mean over entries > -1; none valid -> no GT (NaN here).
            v = p[p > -1]
            return float(v.mean()) if v.size else float("nan")

        ap = {n: mean_valid(precision[:, :, k, a, m]) for k, n in enumerate(names)}
        ap50 = {n: mean_valid(precision[t50, :, k, a, m]) for k, n in enumerate(names)}
        img_set = set(params.imgIds)
        counts = dict.fromkeys(cat_ids, 0)
        for ann in self.coco_gt.dataset["annotations"]:
            cat = ann["category_id"]
            if ann["image_id"] in img_set and not ann.get("iscrowd", 0) and cat in counts:
                counts[cat] += 1
        return EvalResult(
            stats={k: float(v) for k, v in zip(STAT_NAMES, coco_eval.stats)},
            per_class_ap=ap,
            per_class_ap50=ap50,
            precision=precision,
            recall=np.asarray(coco_eval.eval["recall"]),
            iou_thresholds=np.asarray(params.iouThrs, dtype=np.float64),
            recall_thresholds=np.asarray(params.recThrs, dtype=np.float64),
            class_names=names,
            category_ids=cat_ids,
            num_gt={n: counts[c] for n, c in zip(names, cat_ids)},
        )
