"""``efficientdet quickstart``, the README's main job, end to end on a tiny budget: every step
runs offline and leaves what the README promises (data, weights, COCO metrics, drawings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from efficientdet import create_model
from efficientdet.cli import main
from efficientdet.data.formats import read_coco


def test_quickstart_runs_every_step_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "qs"
    args = ["quickstart", "--out", str(out), "--minutes", "0.05", "--images", "10", "--image-size", "128"]
    (out / "train").mkdir(parents=True)
    (out / "train" / "last.ckpt").write_bytes(b"an earlier quickstart")  # a rerun starts over
    assert main([*args, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    for step in ("[1/4]", "[2/4]", "[3/4]", "[4/4]", "done in"):
        assert step in printed

    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_steps"] >= 1 and 0.0 <= summary["AP"] <= 1.0 and 0.0 <= summary["AP50"] <= 1.0
    weights = Path(summary["weights"])
    assert weights == out / "train" / "last.safetensors" and weights.is_file()
    model = create_model(weights=weights)  # a checkpoint that loads by itself: its config travels with it
    assert model.config is not None and model.config.name == "efficientdet_lite0"
    assert model.config.image_size == (128, 128)

    train, val = read_coco(out / "data" / "train.json"), read_coco(out / "data" / "val.json")
    assert len(train.records) + len(val.records) == 10 and len(val.records) == 2  # val_fraction 0.2
    assert model.class_names == list(val.class_names)
    drawings = sorted(p.name for p in (out / "predictions").iterdir())
    assert drawings == sorted(f"{r.image_path.stem}.jpg" for r in val.records)
    for name in drawings:
        with Image.open(out / "predictions" / name) as image:
            assert image.format == "JPEG" and image.size == (128, 128)
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert metrics["stats"]["AP"] == pytest.approx(summary["AP"])  # the summary reports the evaluation's numbers
    assert (out / "eval" / "detections_coco.json").is_file() and (out / "eval" / "pr_curve.png").is_file()
