"""Small objects: whole-image vs sliced inference vs sliced training + inference, Lite0, CPU.

Synthetic 1920x1080 images with 8-32 px objects (``make_synthetic_dataset(object_size=...)``).
Two Lite0 models are trained for ``--minutes`` each (ImageNet backbone, finetune preset, anchors
fitted with ``efficientdet.ops.anchor_fit`` to the scale each one sees): one on whole images
resized to ``--image-size``, one on ``--image-size`` crops at full resolution (``data.crop_size``).
Then three evaluations on the validation images (COCO AP, AP50, AP_small):

1. whole / whole: whole-image model, whole-image inference;
2. whole / sliced: whole-image model, ``SlicedDetector`` (tiles of ``--image-size``, overlap 0.2);
3. sliced / sliced: crop-trained model, sliced inference.

Prints a markdown table (AP_small ratio vs row 1) and writes ``--out/summary.json``.

    python benchmarks/small_objects.py --minutes 10 --out runs/small_objects        # ~25 min
    python benchmarks/small_objects.py --minutes 0.3 --train-images 4 --val-images 2  # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _fitted(train_json: Path, size: int, tile: int | None) -> list[str]:
    """Anchor overrides fitted to the boxes at the scale the model will see them."""
    from efficientdet.data.anchor_boxes import model_input_boxes
    from efficientdet.data.formats import read_dataset
    from efficientdet.ops.anchor_fit import fit_anchors
    from efficientdet.variants import get_config

    config = get_config("efficientdet_lite0").replace(image_size=size)
    boxes, _ = model_input_boxes(read_dataset(train_json), config.image_size, tile=tile, max_boxes=4000)
    fit = fit_anchors(boxes, config.anchors, config.image_size)
    print(f"anchors ({'tiles' if tile else 'whole'}): recall {fit.recall_before:.3f} -> {fit.recall_after:.3f}, {' '.join(fit.overrides)}")
    return fit.overrides


def _train(name: str, train_json: Path, out: Path, args: argparse.Namespace, extra: dict[str, Any]) -> Path:
    from efficientdet.engine.config import load_train_config
    from efficientdet.engine.trainer import Trainer

    overrides = {
        "model": "efficientdet_lite0", "image_size": args.image_size, "data.train": str(train_json),
        "data.workers": 1, "batch_size": args.batch_size, "epochs": 10000, "time_budget_minutes": args.minutes,
        "eval_every": 0, "output": str(out / name), "log_every": 20,
        # as measured in docs/small_objects.md: the preset of 2026-12-03 (no policy, whole network,
        # AdamW's default lr), before v0 joined it and the backbone was frozen
        "augment.policy": "none", "freeze_backbone": False, "optim.lr": None,
        **extra,
    }  # fmt: skip
    cfg = load_train_config(None, overrides, preset="finetune")
    t0 = time.time()
    shutil.rmtree(out / name, ignore_errors=True)  # a rerun measures anew (a run's folder is not reused)
    trainer = Trainer(cfg, progress=False)
    trainer.fit()
    print(f"{name}: {trainer.step} steps in {(time.time() - t0) / 60:.1f} min")
    return out / name / "best.safetensors"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="training time per model (10: 20 in all)")
    parser.add_argument("--out", default="runs/small_objects")
    parser.add_argument("--image-size", type=int, default=320, help="model input = tile = crop side (320)")
    parser.add_argument("--train-images", type=int, default=96)
    parser.add_argument("--val-images", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    import torch

    from efficientdet.data.formats import read_dataset
    from efficientdet.data.synthetic import make_synthetic_dataset
    from efficientdet.engine.config import parse_override
    from efficientdet.evaluation.run import evaluate
    from efficientdet.factory import create_model
    from efficientdet.inference.detector import Detector
    from efficientdet.inference.sliced import SlicedDetector

    out = Path(args.out)
    n = args.train_images + args.val_images
    t0 = time.time()
    train_json = make_synthetic_dataset(
        out / "data", num_images=n, image_size=(1080, 1920), object_size=(8, 32), min_objects=20, max_objects=40,
        classes=("circle", "square", "triangle"), val_fraction=args.val_images / n, seed=0, overwrite=True,
    )  # fmt: skip
    print(f"data: {n} images of 1920x1080 in {time.time() - t0:.0f}s")
    size = args.image_size

    def as_dict(lines: list[str]) -> dict[str, Any]:
        return dict(parse_override(line) for line in lines)

    whole_w = _train("whole", train_json, out, args, as_dict(_fitted(train_json, size, None)))
    sliced_w = _train("sliced", train_json, out, args, {"data.crop_size": size, **as_dict(_fitted(train_json, size, size))})
    val = read_dataset(train_json.parent / "val.json")
    rows = []
    for label, weights, tiled in (("whole / whole", whole_w, False), ("whole / sliced", whole_w, True),
                                  ("sliced / sliced", sliced_w, True)):  # fmt: skip
        detector: Any = Detector(create_model(weights=weights), device="cpu", batch_size=8)
        if tiled:
            detector = SlicedDetector(detector, tile=size, overlap=0.2)
        run = evaluate(detector, val, batch_size=2, progress=False, out_dir=out / "eval" / label.replace(" / ", "_"))
        rows.append({"train / inference": label, **{k: round(run.stats[k], 4) for k in ("AP", "AP50", "APs")}, "seconds": round(run.seconds, 1)})
    base = rows[0]["APs"]
    print(f"\nLite0 at {size}, {args.minutes:g} min training each, {args.train_images} train / {args.val_images} val images, "
          f"{os.cpu_count()} CPU cores, torch {torch.__version__}\n")  # fmt: skip
    print("| train / inference | AP | AP50 | AP_small | AP_small vs whole/whole | eval s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['APs'] / base:.2f}x" if base > 0 else ("n/a (whole/whole AP_small 0)" if r is not rows[0] else "1.00x")
        print(f"| {r['train / inference']} | {r['AP']:.3f} | {r['AP50']:.3f} | {r['APs']:.3f} | {ratio} | {r['seconds']} |")
    (out / "summary.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
