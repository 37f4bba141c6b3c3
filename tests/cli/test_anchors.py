"""``efficientdet anchors`` and the sliced-inference flags of predict: output and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from efficientdet.cli import main
from efficientdet.data.formats import read_dataset
from efficientdet.data.synthetic import make_synthetic_dataset
from efficientdet.data.voc import write_voc


def test_anchors_reports_recall_and_fit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_synthetic_dataset(tmp_path / "d", num_images=3, image_size=(270, 480), object_size=(8, 24),
                                  min_objects=5, max_objects=8, classes=("rectangle",))  # fmt: skip
    assert main(["anchors", str(data), "--model", "efficientdet_lite0", "--tile", "320", "--fit"]) == 0
    out = capsys.readouterr().out
    assert "anchor recall @ IoU 0.5" in out and "by size" in out and "small" in out
    assert "fit: recall" in out and "anchors.anchor_scale=" in out and "anchors.aspect_ratios=" in out


def test_anchors_on_a_dataset_without_boxes_is_one_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_synthetic_dataset(tmp_path / "d", num_images=2, image_size=64, min_objects=0, max_objects=0)
    assert main(["anchors", str(data), "--fit"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("efficientdet anchors: error:") and "no boxes" in err[0]


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--tile", "100"], "--tile 100: must be a positive multiple"), (["--tile", "128", "--tile-overlap", "1"], "--tile-overlap 1.0")],
)  # fmt: skip
def test_predict_bad_tile_flags(tmp_path: Path, tiny_weights: Path, flags: list[str], message: str,
                                capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    data = make_synthetic_dataset(tmp_path / "d", num_images=1, image_size=64)
    rc = main(["predict", str(data.parent / "images"), "--weights", str(tiny_weights), "--out", str(tmp_path / "o"), *flags])
    assert rc == 2 and message in capsys.readouterr().err


def test_predict_with_tiles(tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_synthetic_dataset(tmp_path / "d", num_images=1, image_size=(200, 300))
    out = tmp_path / "o"
    rc = main(["predict", str(data.parent / "images"), "--weights", str(tiny_weights), "--out", str(out),
               "--image-size", "128", "--tile", "128", "--no-draw", "--score-threshold", "0"])  # fmt: skip
    assert rc == 0
    dets = json.loads((out / "detections.json").read_text())
    assert len(dets) == 1
    # too large a tile for one image: one clear error naming it, before any work (it used to
    # stop the run at that image's batch, naming "image #0", the earlier batches' results lost)
    Image.new("RGB", (600, 600)).save(data.parent / "images" / "a_large.png")
    rc = main(["predict", str(data.parent / "images"), "--weights", str(tiny_weights), "--out", str(tmp_path / "o2"),
               "--tile", "256", "--batch-size", "1"])  # fmt: skip
    err = capsys.readouterr().err
    small = next(p for p in (data.parent / "images").iterdir() if p.name != "a_large.png")
    assert rc == 2 and f"--tile 256: larger than {small} (300x200 pixels, WxH); use a tile of at most 192" in err
    assert not (tmp_path / "o2").exists()


def test_eval_with_tiles_records_them(tmp_path: Path, tiny_weights: Path) -> None:
    data = make_synthetic_dataset(tmp_path / "d", num_images=2, image_size=(200, 300))
    out = tmp_path / "e"
    rc = main(["eval", str(data), "--weights", str(tiny_weights), "--out", str(out), "--image-size", "128",
               "--tile", "128", "--tile-overlap", "0.25", "--quiet"])  # fmt: skip
    assert rc == 0
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["tile"] == 128 and doc["tile_overlap"] == 0.25 and doc["num_images"] == 2


def test_eval_with_a_tile_larger_than_an_image_names_the_file_before_any_work(
    tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """eval used to stop at that image's batch with "larger than image #2 (...)": the index in
    the batch, not the file (predict's check from the headers was not shared)."""
    data = make_synthetic_dataset(tmp_path / "d", num_images=3, image_size=((200, 200), (300, 300)))
    doc = json.loads(data.read_text())
    doc["images"][2]["height"] = doc["images"][2]["width"] = 100  # the third image: 100 x 100
    Image.new("RGB", (100, 100)).save(data.parent / doc["images"][2]["file_name"])
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] != doc["images"][2]["id"]]
    data.write_text(json.dumps(doc))
    out = tmp_path / "e"
    rc = main(["eval", str(data), "--weights", str(tiny_weights), "--out", str(out), "--tile", "128", "--quiet"])
    err = capsys.readouterr().err
    third = data.parent / doc["images"][2]["file_name"]
    assert rc == 2 and f"--tile 128: larger than {third} (100x100 pixels, WxH); use a tile of at most 96" in err
    assert not out.exists()


def test_anchors_reads_images_outside_the_json_folder_with_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_synthetic_dataset(tmp_path / "d", num_images=2, image_size=64, min_objects=1, max_objects=2)
    moved = json.loads(data.read_text())
    for img in moved["images"]:
        img["file_name"] = str(Path("..") / data.parent.name / img["file_name"])
    split = tmp_path / "splits" / "train.json"
    split.parent.mkdir()
    split.write_text(json.dumps(moved))
    assert main(["anchors", str(split)]) == 2  # every image skipped: no boxes to measure
    assert "--allow-outside-root for eval and anchors" in capsys.readouterr().err
    assert main(["anchors", str(split), "--allow-outside-root"]) == 0
    assert "anchor recall @ IoU 0.5" in capsys.readouterr().out


def test_anchors_measures_the_training_split_of_a_voc_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without --split, a VOC folder's train list (the boxes train's own check measures), not every XML."""
    coco = make_synthetic_dataset(tmp_path / "d", num_images=4, image_size=64, min_objects=1, max_objects=1)
    index = read_dataset(coco)
    ann_dir = write_voc(index, tmp_path / "voc")
    (tmp_path / "voc" / "ImageSets" / "Main").mkdir(parents=True)
    (tmp_path / "voc" / "ImageSets" / "Main" / "train.txt").write_text(f"{sorted(p.stem for p in ann_dir.glob('*.xml'))[0]}\n")
    assert main(["anchors", str(tmp_path / "voc"), "--model", "efficientdet_lite0"]) == 0
    assert "of 1 boxes" in capsys.readouterr().out
    assert main(["anchors", str(tmp_path / "voc"), "--model", "efficientdet_lite0", "--split", "train"]) == 0
    assert "of 1 boxes" in capsys.readouterr().out


def test_anchors_split_on_a_coco_file_is_ignored_with_a_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A COCO file is its own split (as eval says); --split used to reach read_coco: a TypeError traceback."""
    data = make_synthetic_dataset(tmp_path / "d", num_images=2, image_size=64, min_objects=1, max_objects=1)
    assert main(["anchors", str(data), "--split", "val", "--model", "efficientdet_lite0"]) == 0
    captured = capsys.readouterr()
    assert f"efficientdet anchors: note: --split is ignored for COCO; {data} is the split" in captured.err
    assert "of 2 boxes" in captured.out


def test_fit_note_says_when_the_head_keeps_its_anchor_count() -> None:
    """A fit that kept num_scales printed "they change the head's anchors per location from 9 to 9"."""
    from efficientdet.cli.anchors import fit_note

    assert fit_note(9, 9) == "(train with these KEY=VALUE overrides; the head keeps 9 anchors per location)"
    assert fit_note(9, 12).endswith("they change the head's anchors per location from 9 to 12)")
