"""``efficientdet browse`` on COCO, VOC and YOLO datasets, raw and augmented."""

import json
import struct
import zlib
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
    # the 128 px canvas is drawn 2.5x, filling its 320 px tile
    row = np.asarray(Image.open(tmp_path / "b" / "browse_augmented.png").convert("L"))[160, :320] > 128
    runs = np.diff(np.flatnonzero(np.diff(row.astype(np.int8)) != 0))
    # crops of 102-160 px at scale 1.25-0.8: the 32 px stripes stay 25-40 px wide (whole image: 2-6 px), x 2.5
    assert runs.size and runs.min() >= 50


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


def test_a_small_image_is_enlarged_to_its_tile_with_its_box(tmp_path: Path) -> None:
    """An 8 x 6 image was pasted as an 8 x 6 speck (``thumbnail`` only shrinks), its box and
    name drawn at that size; now the image fills the tile's 320 px and the box scales with it."""
    Image.new("RGB", (8, 6), (40, 90, 160)).save(tmp_path / "small.png")
    ann = {"images": [{"id": 1, "file_name": "small.png", "width": 8, "height": 6}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 4, 3], "area": 12, "iscrowd": 0}],
           "categories": [{"id": 1, "name": "x"}]}  # fmt: skip
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    assert main(["browse", str(tmp_path / "ann.json"), "--out", str(tmp_path / "b")]) == 0
    grid = np.asarray(Image.open(tmp_path / "b" / "browse.png").convert("RGB")).astype(int)
    image = np.abs(grid - (40, 90, 160)).sum(-1) == 0
    assert image[235, 315] and not image[245, 315]  # the image spans 320 x 240 (then the caption)
    outline = ~image[:240, :320]
    # the box [2, 2, 6, 5] x 40 = [80, 80, 240, 200]: its outline, not the image, on those lines
    assert outline[140, 78:83].any() and outline[140, 238:243].any() and outline[198:203, 160].any()
    assert not outline[140, 100:220].any() and not outline[210:240, 160].any()  # inside and below: the image


def test_browse_augmented_names_settings_that_do_nothing(datasets, tmp_path: Path, capsys) -> None:
    args = ["browse", str(datasets["coco"]), "--augment", "--n", "1", "--out", str(tmp_path / "b"),
            "model=efficientdet_lite0", "image_size=64", "data.crop_scale_range=[0.5, 1.5]"]  # fmt: skip
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "efficientdet browse: note: data.crop_scale_range=[0.5, 1.5] does nothing without data.crop_size" in err
    assert main([*args, "data.crop_size=32"]) == 0 and "crop_scale_range" not in capsys.readouterr().err


def _png_header(width: int, height: int) -> bytes:
    """A grayscale PNG that declares width x height but holds 100 bytes of data (a bomb's header)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + ihdr + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")


def test_browse_augmented_refuses_images_over_the_models_pixel_limit_as_train_does(tmp_path: Path, capsys) -> None:
    """--augment built its dataset with no pixel limit: a 120 MP image that train refuses from
    its header (the model's ``max_input_pixels``, 100 MP) was decoded, 120 MB at once."""
    (tmp_path / "huge.png").write_bytes(_png_header(10000, 12000))
    Image.new("RGB", (64, 48), (40, 90, 160)).save(tmp_path / "ok.png")
    images = [{"id": 1, "file_name": "huge.png", "width": 10000, "height": 12000},
              {"id": 2, "file_name": "ok.png", "width": 64, "height": 48}]  # fmt: skip
    (tmp_path / "ann.json").write_text(json.dumps({"images": images, "annotations": [], "categories": [{"id": 1, "name": "x"}]}))
    args = ["browse", str(tmp_path / "ann.json"), "--augment", "--out", str(tmp_path / "b"), "model=efficientdet_lite0", "image_size=64"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "huge.png" in captured.err and "120,000,000 pixels" in captured.err and "max_pixels" in captured.err
    assert "1 images of 2" in captured.out  # the image train would skip is not drawn as if trained on


def test_browse_takes_overrides_before_data_too(datasets, tmp_path: Path, capsys) -> None:
    """``browse augment.policy=v0 DATA`` read the override as DATA: "override 'DATA' is not key=value"."""
    out = tmp_path / "b"
    args = ["browse", "augment.policy=v0", str(datasets["coco"]), "--augment", "--n", "1", "--out", str(out), "image_size=64"]
    assert main(args) == 0 and (out / "browse_augmented.png").is_file()
    assert "1 images of 5" in capsys.readouterr().out
    # no DATA, or a KEY VALUE without its "=": one error that says what the arguments must be
    assert main(["browse", "augment.policy=v0", "--augment", "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("efficientdet browse: error: DATA: give one dataset (got none)")
    assert main(["browse", str(datasets["coco"]), "augment.policy", "v0", "--out", str(out)]) == 2
    assert "(got " + repr(str(datasets["coco"])) + ", 'augment.policy', 'v0')" in capsys.readouterr().err


def test_no_data_is_a_usage_error_naming_only_data(capsys: pytest.CaptureFixture[str]) -> None:
    """It said "the following arguments are required: DATA, KEY=VALUE" (the overrides are optional)."""
    with pytest.raises(SystemExit) as done:
        main(["browse"])
    assert done.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == "efficientdet browse: error: the following arguments are required: DATA"
