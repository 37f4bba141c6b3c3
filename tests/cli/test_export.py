"""efficientdet export: a checked ONNX file with NMS inside that runs like the Detector."""

from __future__ import annotations

from pathlib import Path

import pytest

from efficientdet.cli import main

pytest.importorskip("onnxruntime")


def test_export_onnx_with_nms(tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture) -> None:
    from efficientdet.export import read_onnx_metadata

    out = tmp_path / "model.onnx"
    args = ["export", "--weights", str(tiny_weights), "--out", str(out), "--nms", "--image-size", "128",
            "--onnx-exporter", "torchscript"]  # fmt: skip
    assert main(args) == 0
    assert "checked and run once" in capsys.readouterr().out
    meta = read_onnx_metadata(out)
    assert meta.nms_inside and tuple(meta.image_size) == (128, 128)


def test_unknown_format_lists_formats(tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["export", "--weights", str(tiny_weights), "--out", str(tmp_path / "m.x"), "--format", "tflite"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "tflite" in err and "onnx" in err and "torchscript" in err and "exported-program" in err
