"""DDP training under torchrun (2 gloo processes, CPU): validation sharded over the ranks gives
the numbers one process gets for the same weights, and DDP prints no gradient-layout warning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import json, os, sys, torch
    from efficientdet.engine.config import load_train_config
    from efficientdet.engine.trainer import Trainer
    from efficientdet.engine.distributed import cleanup
    from efficientdet.evaluation.run import evaluate

    train, val, out = sys.argv[1], sys.argv[2], sys.argv[3]
    cfg = load_train_config(None, {
        "model": "efficientdet_lite0", "pretrained_backbone": False, "image_size": 128,
        "data.train": train, "data.val": val, "data.workers": 0, "batch_size": 2, "epochs": 1,
        "eval_every": 1, "output": out, "deterministic": True, "optim.lr": 0.01, "device": "cpu",
    })
    trainer = Trainer(cfg, progress=False)
    trainer.fit()
    sharded = trainer.validate()  # all ranks, each its share of the 5 images
    doc = {"sharded": sharded, "best": trainer.best_metric, "step": trainer.step}
    if trainer.dist.is_main:  # the same weights, one process, every image
        alone = evaluate(trainer.ema.module, trainer.val_index, batch_size=2, progress=False)
        doc["alone"] = {k: alone.stats[k] for k in sharded}
    with open(os.path.join(out, f"rank{trainer.dist.rank}.json"), "w") as f:
        json.dump(doc, f)
    cleanup(trainer.dist)
    """
)


def test_ddp_validation_is_sharded_and_equals_one_process(tiny_dataset: Path, tmp_path: Path) -> None:
    from efficientdet.data.synthetic import make_synthetic_dataset

    val = make_synthetic_dataset(tmp_path / "val", num_images=5, image_size=(128, 128), seed=5, max_objects=2)
    coco = json.loads(val.read_text())  # a bad record: every rank reads it, and each warned about it
    coco["annotations"].append({**coco["annotations"][0], "id": 999, "category_id": 42})
    val.write_text(json.dumps(coco))
    script = tmp_path / "ddp_val.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), str(tiny_dataset), str(val), str(out)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    # channels-last 1x1 / depthwise conv weights used to give DDP gradient buckets other strides
    assert "Grad strides do not match" not in log, log[-4000:]
    assert log.count("unknown category_id 42") == 1, log[-4000:]  # rank 0 alone says it
    r0 = json.loads((out / "rank0.json").read_text())
    r1 = json.loads((out / "rank1.json").read_text())
    assert r0["step"] == r1["step"] == 2  # trained: 8 images, 2 ranks, batch 2
    assert r0["sharded"] == r1["sharded"]  # every rank has the same numbers ...
    assert r0["best"] == r1["best"]  # ... so they agree on the best checkpoint
    for key, value in r0["alone"].items():
        assert abs(r0["sharded"][key] - value) <= 1e-6, (key, r0["sharded"], r0["alone"])
    assert (out / "best.safetensors").exists()
