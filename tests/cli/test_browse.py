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


def test_browse_augmented_shows_the_crops_of_data_crop_size(tmp_path: Path) -> None:
    """``--set data.crop_size=128`` shows 128 px crops at full resolution, as training cuts
    them; browse used to ignore it and show the whole 1024 px image shrunk to 128."""
    stripes = np.zeros((1024, 1024, 3), np.uint8)
    stripes[:, (np.arange(1024) // 32) % 2 == 0] = 255  # 32 px white, 32 px black
    Image.fromarray(stripes).save(tmp_path / "big.png")
    ann = {"images": [{"id": 1, "file_name": "big.png", "width": 1024, "height": 1024}], "annotations": [],
           "categories": [{"id": 1, "name": "x"}]}  # fmt: skip
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    args = ["browse", str(tmp_path / "ann.json"), "--augment", "--n", "1", "--out", str(tmp_path / "b"),
            "--set", "model=efficientdet_lite0", "--set", "image_size=128", "--set", "data.crop_size=128"]  # fmt: skip
    assert main(args) == 0
    row = np.asarray(Image.open(tmp_path / "b" / "browse_augmented.png").convert("L"))[64, :128] > 128
    runs = np.diff(np.flatnonzero(np.diff(row.astype(np.int8)) != 0))
    # crops of 102-160 px at scale 1.25-0.8: the 32 px stripes stay 25-40 px wide (whole image: 2-6 px)
    assert runs.size and runs.min() >= 20


def test_browse_reads_the_training_split_of_a_voc_folder(datasets, tmp_path: Path, capsys) -> None:
    """Without --split, browse shows the images ``train`` reads: a VOC folder's train list."""
    voc_root = Path(datasets["voc"]).parent
    stems = sorted(p.stem for p in Path(datasets["voc"]).glob("*.xml"))
    (voc_root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (voc_root / "ImageSets" / "Main" / "train.txt").write_text("\n".join(stems[:3]) + "\n")
    try:
        assert main(["browse", str(voc_root), "--n", "8", "--out", str(tmp_path / "b")]) == 0
        assert "3 images of 3" in capsys.readouterr().out
    finally:
        (voc_root / "ImageSets" / "Main" / "train.txt").unlink()  # the module's fixture stays as it was


@pytest.mark.parametrize("where", ["a_file", "a_file/sub"])
def test_browse_unwritable_out_is_one_error(datasets, where: str, tmp_path: Path, capsys) -> None:
    """--out a file, or a folder under one (as a read-only folder fails), used to end in a
    FileExistsError / NotADirectoryError traceback."""
    (tmp_path / "a_file").write_text("x")
    assert main(["browse", str(datasets["coco"]), "--n", "1", "--out", str(tmp_path / where)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"efficientdet browse: error: --out {tmp_path / where}") and len(err.splitlines()) == 1
    assert (tmp_path / "a_file").read_text() == "x"


def test_browse_split_on_a_coco_file_is_ignored_with_a_note(datasets, tmp_path: Path, capsys) -> None:
    """--split with a COCO file used to reach read_coco: a TypeError traceback."""
    assert main(["browse", str(datasets["coco"]), "--split", "val", "--n", "2", "--out", str(tmp_path / "b")]) == 0
    captured = capsys.readouterr()
    assert "efficientdet browse: note: --split is ignored for COCO" in captured.err and "2 images of 5" in captured.out


def test_browse_takes_overrides_as_train_does_and_says_when_they_do_nothing(datasets, tmp_path: Path, capsys) -> None:
    # train takes KEY=VALUE positionals, browse only took --set: "unrecognized arguments"
    out = tmp_path / "b"
    args = ["browse", str(datasets["coco"]), "--augment", "--n", "2", "--out", str(out), "augment.policy=v0", "data.hflip=0"]
    assert main(args) == 0 and (out / "browse_augmented.png").is_file()
    assert main(["browse", str(datasets["coco"]), "augment.policy=nonsense", "--augment", "--n", "1", "--out", str(out)]) == 2
    assert "augment.policy" in capsys.readouterr().err  # the override did reach the config
    # without --augment the transforms are not drawn: overrides (but the outside-root flag) do nothing
    assert main(["browse", str(datasets["coco"]), "--n", "1", "--out", str(out), "--set", "augment.mosaic=1",
                 "data.allow_outside_root=true", "--preset", "finetune"]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "note: augment.mosaic=1, --preset finetune: used only with --augment" in err


def test_no_data_is_a_usage_error_naming_only_data(capsys: pytest.CaptureFixture[str]) -> None:
    """It said "the following arguments are required: DATA, KEY=VALUE" (the overrides are optional)."""
    with pytest.raises(SystemExit) as done:
        main(["browse"])
    assert done.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == "efficientdet browse: error: the following arguments are required: DATA"
