"""``efficientdet browse`` on COCO, VOC and YOLO datasets, raw and augmented."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from efficientdet.cli import main
from efficientdet.data.formats import read_dataset
from efficientdet.data.synthetic import make_synthetic_dataset
from efficientdet.data.voc import write_voc
from efficientdet.data.yolo import write_yolo


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("browse")
    coco = make_synthetic_dataset(root / "syn", num_images=5, image_size=96, seed=3)
    index = read_dataset(str(coco))
    return {
        "coco": coco,
        "voc": write_voc(index, root / "voc"),
        "yolo": write_yolo(index, root / "yolo", split="train"),
    }


@pytest.mark.parametrize("fmt", ["coco", "voc", "yolo"])
def test_browse_writes_a_grid(datasets, fmt: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "b"
    args = ["browse", str(datasets[fmt]), "--n", "4", "--out", str(out)]
    if fmt == "yolo":
        args += ["--split", "train"]
    assert main(args) == 0
    img = Image.open(out / "browse.png")
    assert img.size == (2 * 324, 2 * 340)  # 2 x 2 tiles of 320 x (320 + caption) + 4 px gaps
    assert "4 images of 5" in capsys.readouterr().out


def test_browse_augmented_with_overrides(datasets, tmp_path: Path) -> None:
    out = tmp_path / "b"
    args = ["browse", str(datasets["coco"]), "--augment", "--n", "3", "--out", str(out), "--preset", "finetune",
            "--set", "model=efficientdet_lite0", "--set", "image_size=64", "--set", "augment.policy=v3",
            "--set", "augment.mosaic=1.0", "--set", "augment.mixup=0.5"]  # fmt: skip
    assert main(args) == 0
    assert (out / "browse_augmented.png").is_file() and not (out / "browse.png").exists()


def test_browse_bad_input_is_one_clear_error(datasets, tmp_path: Path, capsys) -> None:
    assert main(["browse", str(datasets["coco"]), "--augment", "--set", "augment.policy=v9", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("efficientdet browse: error: augment.policy: unknown policy 'v9'")
    assert not any(tmp_path.iterdir())  # nothing written


def test_caption_sits_under_its_own_image(tmp_path: Path) -> None:
    """A wide image's caption is drawn right under it, not at the foot of its cell (where it
    touched the next row's image and read as that image's title)."""
    Image.new("RGB", (2000, 100), (40, 90, 160)).save(tmp_path / "wide.jpg")
    ann = {"images": [{"id": 1, "file_name": "wide.jpg", "width": 2000, "height": 100}], "annotations": [],
           "categories": [{"id": 1, "name": "x"}]}  # fmt: skip
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    assert main(["browse", str(tmp_path / "ann.json"), "--out", str(tmp_path / "b")]) == 0
    grid = Image.open(tmp_path / "b" / "browse.png").convert("L")
    dark_rows = np.flatnonzero(np.asarray(grid)[:, :300].min(axis=1) < 100).tolist()
    assert dark_rows[0] == 0 and 16 <= max(dark_rows) <= 32  # image rows 0-15, then its caption
