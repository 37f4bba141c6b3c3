"""``efficientdet predict``: mixed and broken inputs, EXIF orientation, outputs, exit codes."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from efficientdet.cli import main
from efficientdet.models.efficientdet import EfficientDet
from efficientdet.outputs.visualize import PALETTE
from efficientdet.variants import get_config

DOG = PALETTE[1]  # the fake detector reports class 1 ("dog")


def _canvas(h: int, w: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """Black HxW RGB image with a white rectangle at ``box`` (x0, y0, x1, y1)."""
    a = np.zeros((h, w, 3), np.uint8)
    x0, y0, x1, y1 = box
    a[y0:y1, x0:x1] = 255
    return a


def _bright_box(path: Path) -> list[float]:
    """Bounding box of the white pixels of ``path`` as displayed (EXIF orientation applied)."""
    g = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("L")) > 175
    rows, cols = np.flatnonzero(g.any(1)), np.flatnonzero(g.any(0))
    return [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]


def _mixed_folder(root: Path) -> dict[str, Path]:
    root.mkdir()
    files = {
        "photo.jpg": Image.fromarray(_canvas(240, 400, (100, 60, 180, 140))),
        "shapes.png": Image.fromarray(_canvas(100, 150, (20, 30, 60, 70))),
        "gray.png": Image.fromarray(_canvas(80, 90, (10, 20, 50, 60))[:, :, 0], mode="L"),
        "rgba.png": Image.fromarray(np.dstack([_canvas(64, 96, (40, 10, 80, 40)), np.full((64, 96), 128, np.uint8)])),
    }
    for name, image in files.items():
        image.save(root / name, **({"quality": 95} if name.endswith(".jpg") else {}))
    # Stored 200x120 (WxH), displayed rotated 90 degrees clockwise (EXIF orientation 6): 120x200.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_canvas(120, 200, (20, 30, 60, 70))).save(root / "rotated.jpg", quality=95, exif=exif)
    Image.fromarray(_canvas(100, 100, (10, 10, 50, 50))).save(root / "full.jpg", quality=95)
    data = (root / "full.jpg").read_bytes()
    (root / "full.jpg").unlink()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "notes.jpg").write_text("not an image")
    (root / "empty.png").write_bytes(b"")
    return {p.name: p for p in root.iterdir()}


@pytest.fixture
def fake_forward(monkeypatch: pytest.MonkeyPatch, bright_forward: Callable) -> None:
    """Every EfficientDet "detects" the white region of its input as a dog."""
    config = get_config("efficientdet_lite0").replace(num_classes=3)
    monkeypatch.setattr(EfficientDet, "forward", bright_forward(config))


def test_mixed_folder(tmp_path: Path, tiny_weights: Path, fake_forward: None, capsys: pytest.CaptureFixture) -> None:
    files = _mixed_folder(tmp_path / "in")
    out = tmp_path / "out"
    rc = main(["predict", str(tmp_path / "in"), "--weights", str(tiny_weights), "--out", str(out), "--batch-size", "2"])
    err = capsys.readouterr().err
    assert rc == 1
    for bad in ("truncated.jpg", "notes.jpg", "empty.png"):
        assert any(bad in line and "warning" in line for line in err.splitlines()), (bad, err)

    valid = ["gray.png", "photo.jpg", "rgba.png", "rotated.jpg", "shapes.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*valid, "detections.json"])
    entries = {Path(e["file"]).name: e for e in json.loads((out / "detections.json").read_text())}
    assert sorted(entries) == valid
    for name in valid:
        src = ImageOps.exif_transpose(Image.open(files[name]))
        drawn = Image.open(out / name)
        assert drawn.size == src.size and drawn.mode == "RGB"
        assert (entries[name]["height"], entries[name]["width"]) == (src.height, src.width)
        [det] = entries[name]["detections"]
        assert det["label"] == 1 and det["name"] == "dog" and det["score"] > 0.99
        np.testing.assert_allclose(det["box"], _bright_box(files[name]), atol=2.5)

    # The rotated photo is displayed 120 wide, 200 high; its white square moved with it.
    assert Image.open(out / "rotated.jpg").size == (120, 200)
    x0, y0, x1, y1 = entries["rotated.jpg"]["detections"][0]["box"]
    assert abs(x0 - 50) < 2.5 and abs(y0 - 20) < 2.5 and abs(x1 - 90) < 2.5 and abs(y1 - 60) < 2.5
    # ... and its "dog" tag sits right above the box (JPEG: colours approximate).
    tag = np.asarray(Image.open(out / "rotated.jpg"))[round(y0) - 8 : round(y0) - 2, round(x0) + 2 : round(x0) + 30]
    np.testing.assert_allclose(np.median(tag.reshape(-1, 3), 0), DOG, atol=40)
    # Lossless output: the outline is exactly the class colour, where the object is.
    shapes = np.asarray(Image.open(out / "shapes.png"))
    bx0, by0, bx1, by1 = (round(v) for v in entries["shapes.png"]["detections"][0]["box"])
    assert tuple(shapes[(by0 + by1) // 2, bx0]) == DOG and tuple(shapes[(by0 + by1) // 2, bx1 - 1]) == DOG
    assert tuple(shapes[(by0 + by1) // 2, (bx0 + bx1) // 2]) == (255, 255, 255)  # inside untouched


def test_all_valid_real_model_csv(tmp_path: Path, tiny_weights: Path) -> None:
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(_canvas(90, 120, (10, 10, 50, 50))).save(src / "a.jpg")
    Image.fromarray(_canvas(60, 60, (5, 5, 20, 20))).save(src / "sub" / "b.png")
    out = tmp_path / "out"
    common = ["--weights", str(tiny_weights), "--out", str(out)]
    assert main(["predict", str(src), *common, "--format", "csv", "--score-threshold", "0.0"]) == 0
    assert (out / "a.jpg").is_file() and (out / "sub" / "b.png").is_file()  # folder layout mirrored
    with open(out / "detections.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and set(rows[0]) == {"file", "x0", "y0", "x1", "y1", "score", "label", "name"}
    assert {Path(r["file"]).name for r in rows} == {"a.jpg", "b.png"}
    for r in rows:
        assert 0 <= float(r["x0"]) <= float(r["x1"]) and 0 <= float(r["score"]) <= 1 and r["name"] in ("cat", "dog", "cup")


def test_files_globs_class_filter_no_draw(tmp_path: Path, tiny_weights: Path, fake_forward: None) -> None:
    for name in ("x1.png", "x2.png", "y.png"):
        Image.fromarray(_canvas(64, 64, (8, 8, 40, 40))).save(tmp_path / name)
    out = tmp_path / "out"
    common = ["--weights", str(tiny_weights), "--out", str(out), "--no-draw"]
    assert main(["predict", str(tmp_path / "x*.png"), str(tmp_path / "y.png"), *common, "--classes", "cat"]) == 0
    entries = json.loads((out / "detections.json").read_text())
    assert [Path(e["file"]).name for e in entries] == ["x1.png", "x2.png", "y.png"]
    assert all(e["detections"] == [] for e in entries)  # the dogs are filtered out
    assert sorted(p.name for p in out.iterdir()) == ["detections.json"]
    assert main(["predict", str(tmp_path / "y.png"), *common, "--classes", "dog"]) == 0
    assert len(json.loads((out / "detections.json").read_text())[0]["detections"]) == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--classes", "zebra"], "unknown class 'zebra'"),
        (["--image-size", "100"], "multiple of 32"),
        (["--weights", "missing.safetensors"], "missing.safetensors"),
        # Were accepted: 30 (meant as 30 %) silently gave no detections, -1 every candidate.
        (["--score-threshold", "30"], "--score-threshold 30.0: must be in 0..1"),
        (["--score-threshold", "-1"], "--score-threshold -1.0: must be in 0..1"),
        (["--score-threshold", "nan"], "--score-threshold nan: must be in 0..1"),
        (["--out", __file__], f"--out {__file__}: is a file; predict writes into a folder"),  # was a traceback
        # Were a NotADirectoryError traceback once the model was loaded:
        (["--out", f"{__file__}/sub"], f"--out {__file__}/sub: cannot create a folder under {__file__}, which is a file"),
        # Were silently ignored without the flag they tune:
        (["--tta-scales", "0.5,1"], "--tta-scales needs --tta"),
        (["--tta-merge", "wbf"], "--tta-merge needs --tta"),
        (["--tile-overlap", "0.5"], "--tile-overlap needs --tile"),
        (["--tile-merge", "wbf"], "--tile-merge needs --tile"),
        # Named no flag: "scales must be positive factors", torch's "Expected one of cpu, cuda, ...".
        (["--tta", "--tta-scales", "0"], "--tta-scales '0': expected positive numbers"),
        (["--device", "tpu"], "--device tpu: not a device"),
    ],
)
def test_usage_errors_exit_2(
    tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str
) -> None:
    Image.fromarray(_canvas(64, 64, (8, 8, 40, 40))).save(tmp_path / "a.png")
    args = ["predict", str(tmp_path / "a.png"), "--weights", str(tiny_weights), "--out", str(tmp_path / "o"), *extra]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_nothing_to_do_exits_2(tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["predict", str(tmp_path / "nope*.jpg"), "--weights", str(tiny_weights)]) == 2
    assert "nope*.jpg" in capsys.readouterr().err


def test_video_without_backend_is_reported(
    tmp_path: Path, tiny_weights: Path, fake_forward: None, capsys: pytest.CaptureFixture
) -> None:
    Image.fromarray(_canvas(64, 64, (8, 8, 40, 40))).save(tmp_path / "a.png")
    (tmp_path / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    out = tmp_path / "out"
    common = ["--weights", str(tiny_weights), "--out", str(out)]
    assert main(["predict", str(tmp_path / "a.png"), str(tmp_path / "clip.mp4"), *common]) == 1
    assert any("clip.mp4" in line for line in capsys.readouterr().err.splitlines())
    assert (out / "a.png").is_file()


def test_video_frames_pipeline(
    tmp_path: Path, tiny_weights: Path, fake_forward: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a (fake) reader and no encoder: frames batched, PNG frames written, one entry per frame."""
    import efficientdet.cli.predict as predict
    import efficientdet.outputs.video as video

    class FakeReader:
        fps = 10.0

        def frames(self):
            for i in range(3):
                yield _canvas(48, 64, (4 + 8 * i, 8, 24 + 8 * i, 30))

    monkeypatch.setattr(predict, "open_video", lambda path: FakeReader())
    monkeypatch.setattr(video, "video_backend", lambda: None)
    (tmp_path / "clip.mp4").write_bytes(b"fake")
    out = tmp_path / "out"
    common = ["--weights", str(tiny_weights), "--out", str(out), "--batch-size", "2"]
    assert main(["predict", str(tmp_path / "clip.mp4"), *common]) == 0
    assert sorted(p.name for p in (out / "clip_frames").iterdir()) == ["000000.png", "000001.png", "000002.png"]
    entries = json.loads((out / "detections.json").read_text())
    assert [e["file"].rsplit("#", 1)[1] for e in entries] == ["frame=0", "frame=1", "frame=2"]
    for i, e in enumerate(entries):
        np.testing.assert_allclose(e["detections"][0]["box"], [4 + 8 * i, 8, 24 + 8 * i, 30], atol=1.5)


# ----------------------------------------------------------------------------- image size limit


def _huge_png(path: Path, width: int, height: int) -> None:
    """A valid 1-bit grayscale PNG of ``width x height`` black pixels, written cheaply: the
    zero rows deflate ~1000:1, so 30000x30000 is ~110 KB on disk (900 M pixels decoded)."""
    import struct
    import zlib

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte 0 + packed bits
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, grayscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_image_over_the_pixel_limit_is_refused_quickly(
    tmp_path: Path, tiny_weights: Path, fake_forward: None, capsys: pytest.CaptureFixture
) -> None:
    import time

    from efficientdet.data.images import ImageError, load_image

    huge = tmp_path / "huge.png"
    _huge_png(huge, 30000, 30000)
    assert huge.stat().st_size < 1_000_000 and huge.read_bytes()[16:24] == bytes.fromhex("0000753000007530")
    Image.fromarray(_canvas(64, 64, (8, 8, 40, 40))).save(tmp_path / "small.png")
    start = time.perf_counter()
    with pytest.raises(ImageError, match=r"huge\.png: image has 900,000,000 pixels \(from its header\), more than max_pixels=100,000,000 "):
        load_image(huge, max_pixels=100_000_000)  # from the header: nothing is decoded
    assert time.perf_counter() - start < 5.0  # decoding 900 M pixels would take far longer (and 2.7 GB)

    out = tmp_path / "out"
    rc = main(["predict", str(huge), str(tmp_path / "small.png"), "--weights", str(tiny_weights), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1  # one input failed; the other is done
    [line] = [ln for ln in err.splitlines() if "huge.png" in ln]
    assert "900,000,000 pixels" in line and "limit of 100,000,000" in line
    assert "--max-input-pixels 900000000" in line  # says how to raise it
    assert [Path(e["file"]).name for e in json.loads((out / "detections.json").read_text())] == ["small.png"]


def test_raised_pixel_limit_accepts_a_large_image(
    tmp_path: Path, fake_forward: None, capsys: pytest.CaptureFixture
) -> None:
    from efficientdet import create_model, save_model

    # A model whose configured limit (1 M pixels) is below the 5000x5000 image's 25 M.
    model = create_model(
        "efficientdet_lite0", num_classes=3, class_names=["cat", "dog", "cup"],
        **{"preprocess.max_input_pixels": 1_000_000},
    )  # fmt: skip
    weights = tmp_path / "limited.safetensors"
    save_model(model, weights)
    big = tmp_path / "big.png"
    Image.fromarray(_canvas(5000, 5000, (1000, 2000, 3000, 4000))[:, :, 0], mode="L").save(big, compress_level=1)
    common = [str(big), "--weights", str(weights), "--no-draw"]

    assert main(["predict", *common, "--out", str(tmp_path / "refused")]) == 1
    err = capsys.readouterr().err
    assert "big.png: image has 25,000,000 pixels (5000x5000), over the limit of 1,000,000" in err
    assert "--max-input-pixels 25000000" in err

    out = tmp_path / "accepted"
    assert main(["predict", *common, "--out", str(out), "--max-input-pixels", "30000000"]) == 0
    [entry] = json.loads((out / "detections.json").read_text())
    assert (entry["height"], entry["width"]) == (5000, 5000)
    [det] = entry["detections"]  # the fake detector finds the white square, in original pixels
    assert det["name"] == "dog" and det["box"] == pytest.approx([1000, 2000, 3000, 4000], abs=40)


def test_large_photo_is_decoded_reduced_and_drawn_in_full(tmp_path: Path, tiny_weights: Path, fake_forward: None) -> None:
    """A 1600x1200 JPEG for Lite0's 320 px input is decoded at 1/2 (as the Detector decodes it);
    the boxes come back in the photo's pixels and the annotated copy is full size."""
    from efficientdet.data.images import load_for_model
    from efficientdet.data.reduced import ReducedImage

    src = tmp_path / "in"
    src.mkdir()
    photo = src / "big.jpg"
    Image.fromarray(_canvas(1200, 1600, (400, 300, 1000, 700))).save(photo, quality=95)
    assert isinstance(load_for_model(photo, (320, 320)), ReducedImage)
    results = {}
    for extra in ([], ["--no-draw"]):
        out = tmp_path / f"out{len(extra)}"
        assert main(["predict", str(src), "--weights", str(tiny_weights), "--out", str(out), *extra]) == 0
        [entry] = json.loads((out / "detections.json").read_text())
        assert (entry["height"], entry["width"]) == (1200, 1600)
        [det] = entry["detections"]
        # one model pixel is 5 photo pixels: the box is found to within ~2 of them
        np.testing.assert_allclose(det["box"], [400, 300, 1000, 700], atol=12)
        results[len(extra)] = det
    assert Image.open(tmp_path / "out0" / "big.jpg").size == (1600, 1200)
    assert not (tmp_path / "out1" / "big.jpg").exists()
    assert results[0] == results[1]  # drawing does not change what the model saw


def test_an_out_folder_without_write_permission_is_one_line(
    tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was a PermissionError traceback once the model was loaded (os.access is faked: root
    may write anywhere)."""
    import os

    Image.fromarray(_canvas(64, 64, (8, 8, 40, 40))).save(tmp_path / "a.png")
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real(p, mode))
    args = ["predict", str(tmp_path / "a.png"), "--weights", str(tiny_weights), "--out", str(locked / "preds")]
    assert main(args) == 2
    assert f"--out {locked / 'preds'}: cannot write in {locked} (permission denied)" in capsys.readouterr().err


def test_a_full_disk_while_drawing_is_one_line(
    tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC at fsync (where some filesystems report it) was an OSError traceback."""
    import errno
    import os

    Image.fromarray(_canvas(64, 64, (8, 8, 40, 40))).save(tmp_path / "a.png")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("efficientdet.fs.os.fsync", full)
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "a.png"), "--weights", str(tiny_weights), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'a.png'}: could not write the annotated image (No space left on device)" in err
    assert "Traceback" not in err and list(out.iterdir()) == []  # no partial file, no temp file


def test_ctrl_c_keeps_the_detections_done_so_far(
    tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long run stopped with Ctrl-C wrote no detections file: hours of results lost. The
    inputs done are written (in input order), then the usual 'interrupted', exit 130."""
    import json

    from efficientdet.inference.detector import Detector

    for name in ("a", "b", "c"):
        Image.fromarray(_canvas(64, 64, (8, 8, 40, 40))).save(tmp_path / f"{name}.png")
    calls = {"n": 0}
    original = Detector.__call__

    def stop_at_second_batch(self, *args, **kw):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kw)

    monkeypatch.setattr(Detector, "__call__", stop_at_second_batch)
    out = tmp_path / "out"
    rc = main(["predict", str(tmp_path), "--weights", str(tiny_weights), "--out", str(out), "--batch-size", "2",
               "--score-threshold", "0"])  # fmt: skip
    assert rc == 130
    err = capsys.readouterr().err
    assert f"interrupted; the detections of 2 inputs so far -> {out / 'detections.json'}" in err
    done = json.loads((out / "detections.json").read_text())
    assert [Path(entry["file"]).name for entry in done] == ["a.png", "b.png"]
