"""``efficientdet anchors DATA --model M``: how many ground-truth boxes the model's anchors can match.

A box counts as matched when some anchor reaches the labeller's positive IoU threshold (0.5)
with it, measured in model-input pixels after the resize (``--tile T``: after cutting T x T
crops at full resolution, as sliced training and inference see the objects). Prints the share
overall, by COCO size bucket and by aspect ratio, and the unmatched boxes (file, box) when few.
``--fit`` searches anchor scale, number of scales and aspect ratios (k-means on the boxes' log
aspect ratios, then a grid search over scale and number of scales; see
``efficientdet.ops.anchor_fit``) and prints the training overrides with the recall before and after.
"""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "fit_note", "run_anchors"]

MAX_LISTED = 20


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "anchors", help="anchor recall of a dataset's boxes; --fit suggests anchor overrides",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("data", metavar="DATA", help="COCO .json, VOC folder, or YOLO folder / data.yaml")
    p.add_argument("--model", default="efficientdet_d0", help="model name (default efficientdet_d0)")
    p.add_argument("--image-size", type=int, default=None, help="model input side (default: the model's)")
    p.add_argument("--split", default=None, help="VOC/YOLO split (default: the one train reads)")
    p.add_argument(
        "--allow-outside-root", action="store_true",
        help="read images whose paths in DATA are absolute or lead outside its folder (skipped by default)",
    )  # fmt: skip
    p.add_argument("--tile", type=int, default=None, help="measure at the scale of T x T full-resolution crops")
    p.add_argument("--fit", action="store_true", help="search anchor shapes and print the overrides")
    p.add_argument("--threshold", type=float, default=0.5, help="IoU that counts as a match (0.5, the labeller's)")
    p.set_defaults(run=run_anchors)


def run_anchors(args: argparse.Namespace) -> int:
    from ..data.anchor_boxes import model_input_boxes
    from ..ops.anchor_fit import fit_anchors, overrides_for
    from ..ops.anchor_stats import anchor_recall
    from ..variants import get_config
    from .common import read_split_arg
    from .notices import print_data_warnings

    config = get_config(args.model)
    if args.image_size is not None:
        if args.image_size <= 0 or args.image_size % 32:
            raise ValueError(f"--image-size {args.image_size}: must be a positive multiple of 32")
        config = config.replace(image_size=args.image_size)
    if args.tile is not None and args.tile <= 0:
        raise ValueError(f"--tile {args.tile}: must be positive")
    if not 0.0 < args.threshold <= 1.0:
        raise ValueError(f"--threshold {args.threshold}: must be in (0, 1]")
    with print_data_warnings("anchors"):  # one plain line per skipped image, as eval prints them
        # without --split, the boxes train's anchor check measures (a VOC folder's train list)
        index, _ = read_split_arg(args.data, args.split, "train", "anchors", args.allow_outside_root)
    boxes, refs = model_input_boxes(index, config.image_size, tile=args.tile)
    if boxes.shape[0] == 0:
        raise ValueError(f"{args.data}: the dataset has no boxes ({len(index)} images); nothing to measure or fit")
    where = f"at {config.image_size[0]}x{config.image_size[1]}" + (f", {args.tile}px tiles" if args.tile else "")
    print(f"{config.name} anchors ({', '.join(overrides_for(config.anchors))}) {where}")
    report = anchor_recall(boxes, config.anchors, config.image_size, args.threshold)
    print(report.table())
    if report.unmatched and len(report.unmatched) <= MAX_LISTED:
        print("unmatched boxes (file: x0,y0,x1,y1 in the image's pixels):")
        for i in report.unmatched:
            path, box = refs[i]
            print(f"  {path}: " + ",".join(f"{v:.0f}" for v in box.tolist()))
    elif report.unmatched:
        print(f"{len(report.unmatched)} unmatched boxes (not listed: more than {MAX_LISTED})")
    if args.fit:
        fit = fit_anchors(boxes, config.anchors, config.image_size, args.threshold)
        print(f"fit: recall {fit.recall_before:.3f} -> {fit.recall_after:.3f} with")
        print("  " + " ".join(fit.overrides))
        print(fit_note(config.anchors.num_anchors, fit.config.num_anchors))
    return 0


def fit_note(before: int, after: int) -> str:
    """The line under ``--fit``'s overrides: what they do to the head (it said "from 9 to 9")."""
    if before == after:
        return f"(train with these KEY=VALUE overrides; the head keeps {before} anchors per location)"
    return f"(train with these KEY=VALUE overrides; they change the head's anchors per location from {before} to {after})"
