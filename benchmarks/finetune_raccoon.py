"""Fine-tune EfficientDet-Lite0 (offline ImageNet backbone) on the raccoon dataset for a fixed
time budget on the CPU, then evaluate COCO AP / AP50 on its validation split.

    python benchmarks/finetune_raccoon.py --data ../shared/datasets/raccoon --minutes 20

The dataset is Pascal VOC XML (annotations/, images/, splits/train.txt, splits/val.txt).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="../shared/datasets/raccoon")
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", default="runs/raccoon")
    parser.add_argument("--seed", type=int, default=0, help="training seed (data order, augmentation, head init)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="extra training config override, repeatable, e.g. --set augment.policy=v0 --set augment.mosaic=0.5",
    )
    args = parser.parse_args()

    import torch

    from efficientdet.data.coco import write_coco
    from efficientdet.data.formats import read_dataset
    from efficientdet.engine.config import load_train_config
    from efficientdet.engine.trainer import Trainer
    from efficientdet.evaluation.run import evaluate
    from efficientdet.factory import create_model

    root = Path(args.data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split in ("train", "val"):
        index = read_dataset(root, split=split)  # splits/<split>.txt: a missing list is an error
        # file names relative to the JSON's folder: they point outside it, which must be allowed
        splits[split] = write_coco(index, out / f"{split}.json")
        print(f"{split}: {len(index)} images, {index.num_objects} boxes, classes {index.class_names}")

    from efficientdet.engine.config import parse_override

    cfg = load_train_config(
        None,
        {
            "seed": args.seed,
            "model": "efficientdet_lite0",
            "image_size": args.image_size,
            "data.train": str(splits["train"]),
            "data.workers": 1,
            "batch_size": args.batch_size,
            "epochs": 1000,
            "time_budget_minutes": args.minutes,
            "eval_every": 0,
            "output": str(out / "train"),
            "log_every": 10,
            "data.allow_outside_root": True,
            **dict(parse_override(o) for o in args.set),
        },
        preset="finetune",
    )
    t0 = time.time()
    shutil.rmtree(out / "train", ignore_errors=True)  # a rerun measures anew (a run's folder is not reused)
    trainer = Trainer(cfg, progress=True)
    trainer.fit()
    train_min = (time.time() - t0) / 60
    model = create_model(weights=out / "train" / "last.safetensors").eval()
    from efficientdet.data.formats import read_coco

    val_index = read_coco(splits["val"], allow_outside_root=True)
    result = evaluate(model, val_index, batch_size=8, out_dir=out / "eval", progress=True)
    summary = {
        "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "device": str(trainer.device),
        "train_minutes": round(train_min, 1),
        "steps": trainer.step,
        "epochs": trainer.epoch,
        "seed": args.seed,
        "overrides": args.set,
        "AP": round(result.stats["AP"], 4),
        "AP50": round(result.stats["AP50"], 4),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
