"""predict on a video file: an annotated video with every frame, detections per frame."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from efficientdet.cli import main

cv2 = pytest.importorskip("cv2")


def _write_clip(path: Path, frames: int = 6, size_wh: tuple[int, int] = (160, 96)) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, size_wh)
    for i in range(frames):
        frame = np.full((size_wh[1], size_wh[0], 3), 80, np.uint8)
        cv2.circle(frame, (20 + 10 * i, size_wh[1] // 2), 12, (40, 30, 220), -1)
        writer.write(frame)
    writer.release()


def test_video_in_annotated_video_out(tmp_path: Path, tiny_weights: Path) -> None:
    clip = tmp_path / "clip.mp4"
    _write_clip(clip)
    out = tmp_path / "out"
    args = ["predict", str(clip), "--weights", str(tiny_weights), "--out", str(out), "--score-threshold", "0.0"]
    assert main(args) == 0
    reader = cv2.VideoCapture(str(out / "clip.mp4"))
    frames = []
    while True:
        ok, frame = reader.read()
        if not ok:
            break
        frames.append(frame)
    assert len(frames) == 6 and frames[0].shape == (96, 160, 3)
    records = json.loads((out / "detections.json").read_text())
    assert len(records) == 6 and all(r["height"] == 96 and r["width"] == 160 for r in records)
    assert all(r["detections"] for r in records)  # threshold 0: every frame has boxes
    assert not list(out.glob(".*"))  # the hidden temp file was renamed onto clip.mp4


def test_a_run_that_fails_mid_video_leaves_no_truncated_video(
    tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from efficientdet.inference.detector import Detector

    clip = tmp_path / "clip.mp4"
    _write_clip(clip, frames=6)
    calls = {"n": 0}
    real = Detector.__call__

    def fail_on_second_batch(self: Detector, *args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 2:  # the first batch of frames is already in the encoder
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Detector, "__call__", fail_on_second_batch)
    out = tmp_path / "out"
    args = ["predict", str(clip), "--weights", str(tiny_weights), "--out", str(out), "--batch-size", "2"]
    assert main(args) == 130  # Ctrl-C: one line, exit 130 (see test_info.py)
    assert calls["n"] == 2
    assert not (out / "clip.mp4").exists() and not list(out.glob(".*"))  # neither the video nor its temp


def test_a_tile_larger_than_the_video_frames_is_refused_before_any_work(
    tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture
) -> None:
    """It used to fail at the video, after the images were done, naming "image #0", and the
    images' detections were never written."""
    from PIL import Image

    Image.fromarray(np.zeros((256, 256, 3), np.uint8)).save(tmp_path / "a.png")
    clip = tmp_path / "clip.mp4"
    _write_clip(clip, frames=2)  # 160x96
    out = tmp_path / "out"
    args = ["predict", str(tmp_path / "a.png"), str(clip), "--weights", str(tiny_weights), "--out", str(out), "--tile", "128"]
    assert main(args) == 2
    assert f"--tile 128: larger than {clip} (160x96 pixels, WxH); use a tile of at most 96" in capsys.readouterr().err
    assert not out.exists()
