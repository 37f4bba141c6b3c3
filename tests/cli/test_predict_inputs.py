"""``predict``'s inputs: folders with videos, an ``--out`` inside (or equal to) an input folder,
annotated copies that would replace an input, ``--tile`` on images smaller than any tile."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from efficientdet.cli import main
from efficientdet.cli.predict_inputs import collect_inputs


def _photo(path: Path, h: int = 64, w: int = 96) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 120, np.uint8)).save(path)
    return path


def test_a_folder_contributes_its_videos_too(tmp_path: Path) -> None:
    # Videos in a folder were silently left out (only a glob or a named file found them).
    _photo(tmp_path / "clips" / "a.png")
    (tmp_path / "clips" / "sub").mkdir()
    for name in ("sub/b.mp4", "c.avi", "notes.txt"):
        (tmp_path / "clips" / name).write_bytes(b"x")
    inputs, problems = collect_inputs([str(tmp_path / "clips")])
    assert problems == []
    assert [(i.rel.as_posix(), i.kind) for i in inputs] == [("a.png", "image"), ("c.avi", "video"), ("sub/b.mp4", "video")]


def test_an_out_folder_inside_the_input_folder_is_not_read_back(tmp_path: Path, tiny_weights: Path) -> None:
    # The second run used to read the first run's annotated copies as inputs (and write
    # photos/preds/preds/...), a third run those too.
    for name in ("a.png", "b.jpg"):
        _photo(tmp_path / "photos" / name)
    out = tmp_path / "photos" / "preds"
    args = ["predict", str(tmp_path / "photos"), "--weights", str(tiny_weights), "--out", str(out)]
    for _ in range(2):
        assert main(args) == 0
        files = [Path(e["file"]).name for e in json.loads((out / "detections.json").read_text())]
        assert files == ["a.png", "b.jpg"]
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.jpg", "detections.json"]
    # A glob reaching into the output folder leaves it out as well.
    inputs, _ = collect_inputs([str(tmp_path / "photos" / "**" / "*.png")], exclude=out)
    assert [i.path for i in inputs] == [tmp_path / "photos" / "a.png"]
    # A folder whose only images are the outputs says so.
    only = _photo(tmp_path / "only" / "preds" / "x.png").parent
    inputs, problems = collect_inputs([str(tmp_path / "only")], exclude=only)
    assert inputs == [] and problems == [f"{tmp_path / 'only'}: all its images and videos are in the output folder "
                                         f"--out {only}, which predict writes its annotated copies into; choose another --out"]


def test_annotated_copies_never_replace_the_inputs(
    tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `--out` the photos' own folder used to overwrite every photo with its annotated copy.
    photo = _photo(tmp_path / "photos" / "a.png")
    original = photo.read_bytes()
    common = ["--weights", str(tiny_weights)]
    for source in (tmp_path / "photos", photo, tmp_path / "photos" / "*.png"):
        assert main(["predict", str(source), *common, "--out", str(tmp_path / "photos")]) == 2
        err = capsys.readouterr().err
        assert f"the annotated copy of {photo} would overwrite the input" in err and "Traceback" not in err
    monkeypatch.chdir(tmp_path / "photos")
    assert main(["predict", "a.png", *common, "--out", "."]) == 2
    assert photo.read_bytes() == original and sorted(p.name for p in photo.parent.iterdir()) == ["a.png"]
    # Without drawing nothing replaces it: only detections.json is written beside it.
    for source in ("a.png", "."):
        assert main(["predict", source, *common, "--out", ".", "--no-draw"]) == 0
        assert photo.read_bytes() == original
        assert [Path(e["file"]).name for e in json.loads(Path("detections.json").read_text())] == ["a.png"]


def test_a_tile_larger_than_a_tiny_image_names_no_impossible_tile(
    tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture
) -> None:
    _photo(tmp_path / "in" / "big.png", 128, 128)
    tiny = _photo(tmp_path / "in" / "tiny.png", 1, 1)
    args = ["predict", str(tmp_path / "in"), "--weights", str(tiny_weights), "--out", str(tmp_path / "o"), "--tile", "64"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"--tile 64: larger than {tiny} (1x1 pixels, WxH); leave that image out" in err
    assert "at most 0" not in err  # was "use a tile of at most 0"
