"""``efficientdet eval DATASET --weights W``: official COCO box AP (and optionally VOC AP50).

DATASET is a COCO annotation JSON, a Pascal VOC folder or a YOLO folder / data.yaml. For a
COCO JSON the annotation file itself is the ground truth (crowd regions and areas as in the
official evaluation). Prints the 12 COCO stats and a per-class table; writes ``metrics.json``,
``detections_coco.json`` (COCO results format, the dataset's category ids) and ``pr_curve.png``
to ``--out``. Unreadable images (and images over ``--max-input-pixels``) are skipped with a
warning, counted and left out of the metrics. ``--backend onnxruntime`` scores the model run in
ONNX Runtime with the same pre- and post-processing (see ``efficientdet predict --help``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import Runner, add_model_args, check_out_folder, check_tile_fits, read_split_arg, too_large_message
from .ranks import add_dist_args, build_runner_on_ranks, join_ranks

if TYPE_CHECKING:  # imported where used: ``efficientdet eval --help`` must not wait for torch
    from ..data.records import DatasetIndex
    from ..engine.distributed import DistInfo
    from ..evaluation.run import EvaluationRun

__all__ = ["add_parser", "load_index", "run_eval"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="COCO mAP (and VOC AP50) of a model on a COCO / VOC / YOLO dataset",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dataset", metavar="DATASET", help="COCO .json, VOC folder, or YOLO folder / data.yaml")
    add_model_args(p)
    p.add_argument(
        "--split", default=None, help="VOC/YOLO split (default val; VOC: all XMLs when there is no ImageSets/Main/val.txt or splits/val.txt)"
    )
    p.add_argument(
        "--allow-outside-root", action="store_true",
        help="read images whose paths in DATASET are absolute or lead outside its folder (skipped by default)",
    )  # fmt: skip
    p.add_argument("--nms", choices=("hard", "soft"), default="hard", help="hard NMS or Gaussian soft-NMS (official eval)")
    p.add_argument("--voc", action="store_true", help="also report Pascal VOC AP50")
    p.add_argument("--out", default="eval", help="output folder (default ./eval)")
    p.add_argument("--max-images", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--workers", type=int, default=None, help="image-decoding worker processes (default: auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--compare", default=None, metavar="WEIGHTS",
        help="also evaluate these weights on the same images and print both APs side by side (e.g. the float "
        "checkpoint next to an int8 .onnx: a checkpoint next to an .onnx runs in that graph's runtime, an .onnx "
        "in the runtime it was exported for)",
    )  # fmt: skip
    add_dist_args(p)
    p.add_argument("--confusion-iou", type=float, default=0.5, help="confusion matrix: IoU for a match (default 0.5)")
    p.add_argument(
        "--confusion-score", type=float, default=0.25,
        help="confusion matrix: detections scoring below are ignored (default 0.25)",
    )  # fmt: skip
    p.set_defaults(run=run_eval)


def load_index(dataset: str, split: str | None, allow_outside_root: bool = False) -> tuple[DatasetIndex, str]:
    """Read DATASET with ``split`` applied where the format has splits (default: its val split);
    return (index, format). ``allow_outside_root``: read images whose paths are absolute or
    escape the dataset's folder."""
    return read_split_arg(dataset, split, "val", "eval", allow_outside_root)


def run_eval(args: argparse.Namespace) -> int:
    from ..engine.distributed import cleanup
    from .notices import print_data_warnings

    info = join_ranks(args)  # under torchrun: one share of the images per process
    try:
        with print_data_warnings("eval"):  # one line per unreadable image, as predict prints them
            return _evaluate_and_report(args, info)
    finally:
        cleanup(info)


def _evaluate_and_report(args: argparse.Namespace, info: DistInfo) -> int:
    from ..data.records import data_issues_shown
    from ..engine.sharding import check_shardable
    from ..evaluation.run import evaluate

    _check_options(args)
    _compare_at_graph_size(args)
    with data_issues_shown(info.is_main):  # the same on every rank
        index, fmt = load_index(args.dataset, args.split, args.allow_outside_root)
    if args.max_images is not None:
        index = dataclasses.replace(index, records=index.records[: args.max_images])
    if len(index) == 0:
        raise ValueError(f"{args.dataset}: no images to evaluate")
    sizes = ((r.image_path, (r.height, r.width) if r.height and r.width else None) for r in index.records)
    check_tile_fits(args.tile, sizes)  # before any work, naming the file (else "image #k" of a batch, mid-run)
    check_shardable(len(index), info)
    out = Path(args.out)
    runner = build_runner_on_ranks(args, out, info)
    if runner.nms_inside:
        raise ValueError(_nms_inside_message(args.weights))
    # The detector predict runs (same stages, same input), so eval scores what predict outputs.
    run = evaluate(
        runner.detector, index, batch_size=args.batch_size, nms=args.nms, voc=args.voc, out_dir=out,
        progress=not args.quiet, gt=args.dataset if fmt == "coco" else None, num_workers=args.workers, dist=info,
        confusion=(args.confusion_iou, args.confusion_score),
    )  # fmt: skip
    if not info.is_main:
        return 0  # rank 0 wrote the files and reports
    metrics_path = _add_run_to_metrics(args, out, fmt, runner)
    _print_report(args, runner, run)
    if args.compare:
        _compare(args, index, fmt, out, runner, run)
    written = [metrics_path, out / "detections_coco.json", out / "pr_curve.png", out / "confusion_matrix.png"]
    if fmt != "coco":  # VOC / YOLO: the ground truth the detections were scored against, as COCO
        written.insert(2, out / "ground_truth_coco.json")
    if args.compare:
        written.append(out / "compare")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _check_options(args: argparse.Namespace) -> None:
    """The numeric options, checked before the dataset is read."""
    if args.batch_size < 1:
        raise ValueError(f"--batch-size {args.batch_size}: must be at least 1")
    if args.max_images is not None and args.max_images < 1:
        raise ValueError(f"--max-images {args.max_images}: must be at least 1")
    if args.workers is not None and args.workers < 0:  # was torch's "num_workers option should be non-negative"
        raise ValueError(f"--workers {args.workers}: must be >= 0 (0 decodes in the main process)")
    if not 0.0 < args.confusion_iou <= 1.0:
        raise ValueError(f"--confusion-iou {args.confusion_iou}: must be in (0, 1]")
    if not 0.0 <= args.confusion_score <= 1.0:
        raise ValueError(f"--confusion-score {args.confusion_score}: must be in [0, 1]")
    check_out_folder(args.out, "eval", "metrics.json, detections, plots")
    if args.compare is not None:
        _check_compare(args.compare)


def _compare_at_graph_size(args: argparse.Namespace) -> None:
    """With ``--compare`` and no ``--image-size``, a checkpoint next to a graph runs at the graph's
    input size: the difference is then the weights' (an int8 file exported at 256 from a model
    trained at 192 was scored against the checkpoint at 192: -0.10 AP shown as quantization's)."""
    from ..export.metadata import is_graph_file, read_onnx_metadata

    if args.compare is None or args.image_size is not None:
        return
    graphs = [w for w in (args.weights, args.compare) if is_graph_file(w)]
    if len(graphs) == 1:
        h, w = read_onnx_metadata(graphs[0]).image_size
        if h == w:  # --image-size is square; every exported graph is
            args.image_size = h


def _nms_inside_message(weights: str) -> str:
    return (
        f"{weights} has NMS inside, with fixed thresholds; evaluation needs the raw scores "
        "(score threshold 0.001, --nms): export without --nms, or pass the normal weights"
    )


def _check_compare(weights: str) -> None:
    """``--compare`` refused as ``--weights`` would be, before the first evaluation: it used to
    run a graph with NMS inside, and a missing file failed only after the whole first run."""
    from ..export.metadata import is_graph_file, read_onnx_metadata
    from ..weights.registry import OFFICIAL_WEIGHTS

    if is_graph_file(weights):
        if read_onnx_metadata(weights).nms_inside:  # a missing or corrupt graph: an error naming it
            raise ValueError(f"--compare {_nms_inside_message(weights)}")
    elif "://" not in weights and weights not in OFFICIAL_WEIGHTS and not Path(weights).expanduser().is_file():
        raise ValueError(f"--compare {weights}: no such file (nor a registered weights name or a URL)")


def _add_run_to_metrics(args: argparse.Namespace, out: Path, fmt: str, runner: Runner) -> Path:
    """Put what was evaluated into ``out/metrics.json``, next to the numbers; returns its path."""
    from ..fs import atomic_write

    metrics_path = out / "metrics.json"
    doc = json.loads(metrics_path.read_text(encoding="utf-8"))
    doc = {
        "model": runner.config.name, "weights": str(args.weights), "dataset": str(args.dataset), "format": fmt,
        "split": args.split, "tta": bool(args.tta), "backend": runner.backend,
        "image_size": list(runner.config.image_size),
        "tile": args.tile, "tile_overlap": args.tile_overlap if args.tile else None, **doc,
    }  # fmt: skip
    atomic_write(metrics_path, json.dumps(doc, indent=2) + "\n")
    return metrics_path


def _print_report(args: argparse.Namespace, runner: Runner, run: EvaluationRun) -> None:
    """The COCO stats, the per-class table and VOC AP50 on stdout; skipped images on stderr."""
    from ..evaluation.run import coco_summary

    print(
        f"{runner.config.name} ({_backend_label(runner)}) on {args.dataset}: {run.num_images} images, "
        f"nms={args.nms}, {run.seconds:.1f}s"
    )
    print(coco_summary(run.stats))
    print()
    print(run.table())
    if run.voc is not None:
        print()
        fmt_ap = lambda v: "    -" if math.isnan(v) else f"{v:5.3f}"  # noqa: E731
        width = max(len("class"), *(min(len(n), 40) for n in run.voc["per_class"]))
        print(f"{'Pascal VOC':<{width}}   AP50")
        for name, ap in run.voc["per_class"].items():
            print(f"{name[:40]:<{width}}  {fmt_ap(ap)}")
        print(f"{'mAP':<{width}}  {fmt_ap(run.voc['mAP'])}")
    if run.skipped_images:
        print(f"{len(run.skipped_images)} unreadable image(s) skipped and left out of the metrics", file=sys.stderr)
        for line in _too_large(run.skipped_images, runner.max_input_pixels):
            print(f"efficientdet eval: {line}", file=sys.stderr)


def _backend_label(runner: Any) -> str:
    """``torch``, ``onnxruntime`` or ``onnxruntime, int8`` (from the graph's metadata)."""
    meta = getattr(runner.detector, "metadata", None)
    return f"{runner.backend}, int8" if meta is not None and meta.int8 else runner.backend


def _compare(args: argparse.Namespace, index: Any, fmt: str, out: Path, runner: Any, run: Any) -> None:
    """``--compare WEIGHTS``: the same evaluation of other weights (its files under
    ``out/compare``), a side-by-side table with the AP difference's bootstrap interval, and
    both in ``metrics.json``."""
    from ..evaluation.coco import stat_text
    from ..evaluation.run import evaluate
    from ..export.metadata import is_graph_file
    from ..fs import atomic_write
    from .common import GRAPH_BACKENDS, build_runner

    backend = args.backend
    if backend == "auto" and not is_graph_file(args.compare) and runner.backend in GRAPH_BACKENDS:
        # A checkpoint next to a graph runs in the graph's engine (exported there, float): the
        # difference is then the weights' (e.g. int8 vs float) and not the runtimes'.
        backend = runner.backend
    elif backend == "torch" and is_graph_file(args.compare):
        backend = "auto"
    other_args = argparse.Namespace(**{**vars(args), "weights": args.compare, "backend": backend})
    other_out = out / "compare"
    other = build_runner(other_args, other_out)
    other_run = evaluate(  # the same scoring as the first run: VOC AP50 and the confusion matrix too
        other.detector, index, batch_size=args.batch_size, nms=args.nms, voc=args.voc, out_dir=other_out,
        progress=not args.quiet, gt=args.dataset if fmt == "coco" else None, num_workers=args.workers,
        confusion=(args.confusion_iou, args.confusion_score),
    )  # fmt: skip
    _add_run_to_metrics(other_args, other_out, fmt, other)  # else its metrics.json named no weights
    stats, other_stats = dict(run.stats), dict(other_run.stats)
    keys: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    if run.voc is not None and other_run.voc is not None:  # --voc: Pascal VOC mAP (AP50) side by side too
        stats["VOC"], other_stats["VOC"] = run.voc["mAP"], other_run.voc["mAP"]
        keys += ("VOC",)
    rows = [(f"{args.weights} ({_backend_label(runner)})", stats), (f"{args.compare} ({_backend_label(other)})", other_stats)]
    width = max(len(r[0]) for r in rows)
    print()
    print(f"{'weights':<{width}}  " + "  ".join(f"{k:>6}" for k in keys))
    for name, values in rows:
        print(f"{name:<{width}}  " + "  ".join(f"{stat_text(values[k]):>6}" for k in keys))
    # A stat that either run lacks (COCO's -1: no ground truth in that area range) has no difference.
    diffs = [stats[k] - other_stats[k] if min(stats[k], other_stats[k]) >= 0 else math.nan for k in keys]
    print(f"{'difference (first - second)':<{width}}  " + "  ".join(f"{stat_text(d, difference=True):>6}" for d in diffs))
    metrics_path = out / "metrics.json"
    doc = json.loads(metrics_path.read_text(encoding="utf-8"))
    doc["compare"] = {"weights": str(args.compare), "backend": _backend_label(other), "stats": other_run.stats}
    interval = _ap_interval(index, args.dataset if fmt == "coco" else None, out, other_out, run, other_run)
    if interval is not None:
        print(interval.summary())
        doc["compare"]["ap_difference"] = dataclasses.asdict(interval)
    atomic_write(metrics_path, json.dumps(doc, indent=2) + "\n")


def _ap_interval(index: Any, gt: Any, out: Path, other_out: Path, run: Any, other_run: Any) -> Any:
    """The paired bootstrap interval of the AP difference over the images both runs read (from
    the detections each wrote), or None above ``MAX_BOOTSTRAP_IMAGES`` images."""
    from ..evaluation.bootstrap import MAX_BOOTSTRAP_IMAGES, paired_ap_interval, per_image_evaluation
    from ..evaluation.coco import CocoEvaluator
    from ..evaluation.run import ground_truth

    skipped = set(run.skipped_images) | set(other_run.skipped_images)
    ids = [r.image_id for r in index.records if str(r.image_path) not in skipped]
    if not ids or len(ids) > MAX_BOOTSTRAP_IMAGES:
        return None
    coco_gt = CocoEvaluator(ground_truth(index, gt)).coco_gt
    first, second = (
        per_image_evaluation(coco_gt, json.loads((d / "detections_coco.json").read_text(encoding="utf-8")), ids)
        for d in (out, other_out)
    )
    interval = paired_ap_interval(first, second)
    return interval if math.isfinite(interval.difference) else None  # no ground truth: no AP to compare


def _too_large(paths: list[str], limit: int) -> list[str]:
    """One line per skipped image that was skipped for its size (read from its header)."""
    from ..data.images import ImageError, image_size_of

    lines = []
    for path in paths:
        try:
            h, w = image_size_of(path)
        except ImageError as exc:  # Pillow's own bomb guard refuses the header of huge images
            msg = too_large_message(exc, limit)
            if msg is not None:
                lines.append(msg)
            continue
        if h * w > limit:
            lines.append(
                f"{path}: image has {h * w:,} pixels ({h}x{w}), over the limit of {limit:,}; "
                f"if you trust the file, rerun with --max-input-pixels {h * w}"
            )
    return lines
