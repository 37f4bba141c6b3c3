"""``evaluate``: run a detector over a dataset and score it with the official COCO protocol.

Used by ``efficientdet eval`` and by training for validation mAP. Every detector (``Detector``,
``TTADetector``, ``OnnxDetector``; a bare model or an EMA/DDP wrapper of one becomes a
``Detector``) runs the same stages as ``predict``: a ``DataLoader`` decodes the images
(optionally in worker processes), and ``detector.detect`` prepares, runs and post-processes each
batch. So ``eval`` scores exactly the detections ``predict`` writes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..config import PostprocessConfig
from ..data.dataset import DetectionDataset
from ..data.loaders import ignore_stop_signals
from ..data.records import DatasetIndex
from ..engine.distributed import DistInfo
from ..engine.sharding import broadcast_from_main, check_shardable, gather_to_main, merge_in_order, shard_positions
from ..fs import atomic_write
from ..inference.detector import Detector
from ..inference.protocol import ImageDetector, check_score_threshold, torch_threads
from ..models.efficientdet import EfficientDet
from .coco import STAT_NAMES, CocoEvaluator, CocoGroundTruth, EvalResult, gt_list_to_coco
from .confusion import ConfusionResult, confusion_matrix, plot_confusion
from .labels import label_mapping
from .plots import plot_precision_recall
from .voc import VocResult, voc_ap50

__all__ = ["EvaluationRun", "coco_summary", "evaluate", "ground_truth", "label_mapping", "write_ground_truth"]

# pycocotools' summarize() wording for each of the 12 stats.
_STAT_TEXT: tuple[tuple[str, str, str, int], ...] = (
    ("Average Precision", "0.50:0.95", "all", 100), ("Average Precision", "0.50", "all", 100),
    ("Average Precision", "0.75", "all", 100), ("Average Precision", "0.50:0.95", "small", 100),
    ("Average Precision", "0.50:0.95", "medium", 100), ("Average Precision", "0.50:0.95", "large", 100),
    ("Average Recall", "0.50:0.95", "all", 1), ("Average Recall", "0.50:0.95", "all", 10),
    ("Average Recall", "0.50:0.95", "all", 100), ("Average Recall", "0.50:0.95", "small", 100),
    ("Average Recall", "0.50:0.95", "medium", 100), ("Average Recall", "0.50:0.95", "large", 100),
)  # fmt: skip


@dataclass
class EvaluationRun(EvalResult):
    """An :class:`EvalResult` plus what the run saw: VOC AP50 (when asked), images scored,
    images skipped as unreadable (excluded from the metrics), NMS mode and wall time."""

    voc: VocResult | None = None
    num_images: int = 0
    skipped_images: list[str] = field(default_factory=list)
    nms: str = "hard"
    seconds: float = 0.0
    confusion: ConfusionResult | None = None

    def table(self) -> str:
        """The per-class table, with false positives and missed objects when there is a confusion matrix."""
        text = super().table()
        if self.confusion is None:
            return text
        lines = text.split("\n")
        fp, missed = self.confusion.false_positives, self.confusion.missed
        lines[0] += "     FP  missed"
        k = len(self.class_names)
        lines[1] += "-" * 15
        lines[2 + k] += "-" * 15
        for i, name in enumerate(self.class_names):
            lines[2 + i] += f"  {fp.get(name, 0):5d}  {missed.get(name, 0):6d}"
        lines[3 + k] += f"  {sum(fp.values()):5d}  {sum(missed.values()):6d}"
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """The ``metrics.json`` document (NaN -> null: JSON has no NaN)."""
        doc: dict[str, Any] = {
            "stats": self.stats,
            "per_class": {
                n: {"AP": self.per_class_ap[n], "AP50": self.per_class_ap50[n], "num_gt": self.num_gt.get(n, 0)}
                for n in self.class_names
            },
            "num_images": self.num_images,
            "num_skipped": len(self.skipped_images),
            "skipped_images": self.skipped_images,
            "nms": self.nms,
            "seconds": round(self.seconds, 3),
        }
        if self.confusion is not None:
            doc["confusion"] = self.confusion.to_json()
            fp, missed = self.confusion.false_positives, self.confusion.missed
            for n in self.class_names:
                doc["per_class"][n].update(fp=fp.get(n, 0), missed=missed.get(n, 0))
        if self.voc is not None:
            doc["voc"] = {"mAP": self.voc["mAP"], "per_class": self.voc["per_class"]}
        return _no_nan(doc)


def _no_nan(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _no_nan(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_no_nan(v) for v in x]
    return x


def coco_summary(stats: Mapping[str, float]) -> str:
    """The 12 COCO stats in pycocotools' ``summarize()`` layout."""
    lines = []
    for name, (kind, iou, area, dets) in zip(STAT_NAMES, _STAT_TEXT):
        short = "(AP)" if kind.endswith("Precision") else "(AR)"
        lines.append(f" {kind:<18} {short} @[ IoU={iou:<9} | area={area:>6} | maxDets={dets:>3} ] = {stats[name]:0.3f}")
    return "\n".join(lines)


def _unwrap(obj: Any) -> Any:
    """EMA (timm ModelEmaV2/V3, torch AveragedModel), DDP, DataParallel -> the inner module."""
    while not isinstance(obj, EfficientDet) and isinstance(getattr(obj, "module", None), torch.nn.Module):
        obj = obj.module
    return obj


def _collate_list(batch: list[dict[str, Any] | None]) -> list[dict[str, Any]]:
    return [s for s in batch if s is not None]  # images keep their own sizes


def as_detector(model_or_detector: Any) -> ImageDetector:
    """A detector as is; a model (or an EMA/DDP wrapper of one) as a ``Detector`` on its device
    (an inference-optimised copy: the model itself, and its train/eval mode, are untouched)."""
    if isinstance(model_or_detector, ImageDetector):
        return model_or_detector
    model = _unwrap(model_or_detector)
    if not isinstance(model, EfficientDet):
        raise TypeError(f"expected an EfficientDet or a detector, got {type(model_or_detector).__name__}")
    return Detector(model)


Batch = tuple[list[str], list[int], list[dict[str, Any]]]  # (paths, image ids, detections)


def detection_batches(
    detector: ImageDetector, index: DatasetIndex, post: PostprocessConfig, batch_size: int, num_workers: int
) -> Iterator[Batch]:
    """Decoded images (own sizes) in batches through ``detector.detect``. Images over the
    detector's ``max_input_pixels`` are skipped from their header, before any decoding."""
    # Decoded as the detector's own call decodes (large JPEGs at a reduced scale): eval scores what predict does.
    dataset = DetectionDataset(index, None, detector.preprocess_config.max_input_pixels, detector.decode_size)
    # workers leave stopping to this process: a signal to the process group (a training run's
    # SIGTERM) must not kill them under its validation
    loader = iter(DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=_collate_list,
        worker_init_fn=ignore_stop_signals,
    ))  # fmt: skip
    while True:
        with torch_threads(detector.host_threads):  # decoding: as the detector's own call
            samples = next(loader, None)
        if samples is None:
            return
        if samples:  # else every image of the batch was unreadable
            dets = detector.detect([s["image"] for s in samples], post)
            yield [s["path"] for s in samples], [s["image_id"] for s in samples], dets


def evaluate(
    model_or_detector: Any,
    index: DatasetIndex,
    batch_size: int = 8,
    nms: Literal["hard", "soft"] = "hard",
    voc: bool = False,
    out_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    *,
    gt: CocoGroundTruth | None = None,
    num_workers: int | None = None,
    score_threshold: float = 0.001,
    max_detections: int = 100,
    dist: DistInfo | None = None,
    confusion: tuple[float, float] | None = None,
) -> EvaluationRun:
    """COCO box AP of a model on ``index`` (every record is scored; subset the index to score fewer).

    Args:
        model_or_detector: a detector (``Detector``, ``TTADetector``, ``OnnxDetector``: its
            NMS IoU is used), or an ``EfficientDet`` (or an EMA/DDP wrapper with ``.module``),
            run as ``Detector(model)``.
        index: the dataset, e.g. from ``read_dataset``.
        nms: ``"hard"`` or ``"soft"`` (Gaussian soft-NMS, as the official evaluation).
        voc: also compute Pascal VOC AP50 (``result.voc``).
        out_dir: when given, write ``metrics.json``, ``detections_coco.json`` (COCO results
            format, the dataset's category ids) and ``pr_curve.png`` there.
        gt: COCO ground truth to score against instead of the index's boxes (the annotation
            file: keeps crowd regions and segmentation areas, so the numbers are official).
        num_workers: DataLoader workers; default 0 for small sets (< 64 images), else up to 4.
        score_threshold, max_detections: the official evaluation's 0.001 and 100.
        dist: under torchrun, every rank of ``dist`` runs its share of the images
            (``engine.sharding``); rank 0 scores them all and alone writes ``out_dir``; every
            rank returns the same result. Call it on all ranks.
        confusion: (IoU, score) thresholds of a confusion matrix (``run.confusion``; with
            ``out_dir`` also ``confusion_matrix.png``), or None for none.

    Unreadable images are skipped with a warning, listed in ``skipped_images`` and left out of
    the metrics.
    """
    if nms not in ("hard", "soft"):
        raise ValueError(f"unknown nms {nms!r}; expected 'hard' or 'soft'")
    _check_counts(batch_size=batch_size, max_detections=max_detections)
    check_score_threshold(score_threshold)  # 5 scored nothing, AP 0.0, without a word
    if len(index) == 0:
        raise ValueError("the dataset has no images to evaluate")
    start = time.perf_counter()
    detector = as_detector(model_or_detector)
    category_ids, to_dataset = label_mapping(detector.num_classes, detector.class_names, index)
    post = dataclasses.replace(
        detector.postprocess_config, nms=nms, score_threshold=score_threshold, max_detections=max_detections
    )

    info = dist or DistInfo()
    detected = _detect_sharded(detector, index, post, batch_size, num_workers, progress, info)
    run: EvaluationRun | Exception | None = None
    if detected is not None:  # rank 0 (or alone): score everything, write the files
        merged, seen = detected
        try:
            run = _score(merged, seen, index, category_ids, to_dataset, gt, voc, nms, start, out_dir, confusion)
        except (RuntimeError, ValueError, OSError) as err:
            if not info.enabled:
                raise
            run = err  # the other ranks wait for the result: they raise the same error
    return _shared_result(run, info)


def _check_counts(**counts: int) -> None:
    """Each of ``counts`` at least 1, else a ValueError naming it (batch_size=0 was a ZeroDivisionError)."""
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} {value!r}: must be an integer of at least 1")


def _detect_sharded(
    detector: ImageDetector,
    index: DatasetIndex,
    post: PostprocessConfig,
    batch_size: int,
    num_workers: int | None,
    progress: bool,
    info: DistInfo,
) -> tuple[list[tuple[int, dict[str, torch.Tensor]]], set[str]] | None:
    """Every rank detects its share of ``index``; on rank 0 (or alone) all ``(image id, dets)``
    in index order and the paths read, None on the other ranks."""
    check_shardable(len(index), info)
    positions = shard_positions(len(index), info)
    share = dataclasses.replace(index, records=[index.records[p] for p in positions])
    if num_workers is None:
        num_workers = 0 if len(share) < 64 else min(4, os.cpu_count() or 1)
    local, seen = _detect_share(detector, share, positions, post, batch_size, num_workers, progress and info.is_main)
    gathered = gather_to_main((local, sorted(seen)), info)
    if gathered is None:
        return None
    return merge_in_order([shard for shard, _ in gathered]), {p for _, paths in gathered for p in paths}


def _shared_result(run: EvaluationRun | Exception | None, info: DistInfo) -> EvaluationRun:
    """Rank 0's result (or error, raised) on every rank."""
    # mypy infers object here (it joins EvaluationRun | Exception): the isinstance checks narrow it back.
    shared = broadcast_from_main(run, info)
    if isinstance(shared, Exception):
        raise shared
    assert isinstance(shared, EvaluationRun)  # rank 0 always has a result or an error
    return shared


def ground_truth(index: DatasetIndex, gt: CocoGroundTruth | None = None) -> CocoGroundTruth:
    """What :func:`evaluate` scores against: ``gt`` when given (a COCO annotation file keeps
    crowd regions and segmentation areas), else the index's boxes as a COCO dataset dict."""
    if gt is not None:
        return gt
    gts = [
        {"image_id": r.image_id, "boxes": r.boxes, "labels": r.labels, "height": r.height, "width": r.width}
        for r in index.records
    ]
    return gt_list_to_coco(gts, index.class_names, index.category_ids)


def write_ground_truth(index: DatasetIndex, path: str | os.PathLike[str]) -> Path:
    """The index's boxes as the COCO file :func:`evaluate` scores them as (ids as in its
    ``detections_coco.json``), each image with its ``file_name``: pycocotools re-scores from it."""
    doc = ground_truth(index)
    assert isinstance(doc, dict)  # built from the index, not a given file
    files = {r.image_id: str(r.image_path) for r in index.records}
    for image in doc["images"]:
        image["file_name"] = files[image["id"]]
    atomic_write(Path(path), json.dumps(doc) + "\n")
    return Path(path)


def _detect_share(
    detector: Any,
    share: DatasetIndex,
    positions: list[int],
    post: Any,
    batch_size: int,
    num_workers: int,
    progress: bool,
) -> tuple[list[tuple[int, tuple[int, dict[str, torch.Tensor]]]], set[str]]:
    """Detections of this process's share: ``(position in the index, (image id, dets))`` per
    image (dets on the CPU: boxes (N, 4) xyxy pixels, scores (N,), labels (N,)), and the paths read."""
    from tqdm import tqdm

    local: list[tuple[int, tuple[int, dict[str, torch.Tensor]]]] = []
    seen: set[str] = set()
    where = {r.image_id: p for r, p in zip(share.records, positions)}
    batches = detection_batches(detector, share, post, batch_size, num_workers)
    bar = tqdm(
        batches, total=math.ceil(len(share) / batch_size), desc="eval", unit="batch", file=sys.stderr,
        disable=not progress, dynamic_ncols=True,
    )
    for paths, image_ids, dets in bar:
        seen.update(paths)
        for i, d in zip(image_ids, dets):
            kept = {k: v.detach().cpu() for k, v in d.items() if k in ("boxes", "scores", "labels")}
            local.append((where[i], (i, kept)))
    return local, seen


def _score(
    dets: list[tuple[int, dict[str, torch.Tensor]]],
    seen: set[str],
    index: DatasetIndex,
    category_ids: list[int],
    to_dataset: np.ndarray,
    gt: CocoGroundTruth | None,
    voc: bool,
    nms: str,
    start: float,
    out_dir: str | os.PathLike[str] | None,
    confusion: tuple[float, float] | None = None,
) -> EvaluationRun:
    """COCO (and VOC) scores of ``(image id, detections)`` in dataset order; writes ``out_dir``."""
    evaluator = CocoEvaluator(ground_truth(index, gt), category_ids=category_ids)
    voc_gts: list[dict[str, Any]] = []
    voc_dets: list[dict[str, Any]] = []
    records = {r.image_id: r for r in index.records}
    for i, d in dets:
        evaluator.update([i], [d])
        if voc or confusion is not None:  # both count in the dataset's classes
            lab = torch.from_numpy(to_dataset)[d["labels"]]
            ok = lab >= 0  # classes the dataset lacks cannot be right or wrong in VOC terms
            # GT from the records: original pixels, like the detections.
            # VOC's difficult objects: neither hits nor misses in VOC AP50 (the devkit's rule).
            voc_gts.append({"boxes": records[i].boxes, "labels": records[i].labels, "difficult": records[i].difficult})
            voc_dets.append({"boxes": d["boxes"][ok], "scores": d["scores"][ok], "labels": lab[ok]})

    skipped = [str(r.image_path) for r in index.records if str(r.image_path) not in seen]
    if not evaluator.image_ids:
        raise RuntimeError(f"none of the {len(index)} images could be read; nothing to evaluate")
    result = evaluator.compute(image_ids=evaluator.image_ids)
    run = EvaluationRun(
        **{f.name: getattr(result, f.name) for f in dataclasses.fields(EvalResult)},
        voc=voc_ap50(voc_gts, voc_dets, index.class_names) if voc else None,
        num_images=len(evaluator.image_ids),
        skipped_images=skipped,
        nms=nms,
    )
    if confusion is not None:
        run.confusion = confusion_matrix(voc_gts, voc_dets, index.class_names, *confusion)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        evaluator.save_results(out / "detections_coco.json")
        if gt is None:  # VOC / YOLO: the boxes scored, as COCO, so that the detections' ids mean something
            write_ground_truth(index, out / "ground_truth_coco.json")
        plot_precision_recall(run, out / "pr_curve.png")
        if run.confusion is not None:
            plot_confusion(run.confusion, out / "confusion_matrix.png")
        run.seconds = time.perf_counter() - start
        atomic_write(out / "metrics.json", json.dumps(run.to_json(), indent=2) + "\n")
    run.seconds = time.perf_counter() - start
    return run
