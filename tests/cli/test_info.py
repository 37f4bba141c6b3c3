"""efficientdet info: a variant's size and cost, or what an exported graph holds."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from efficientdet.cli import main


def test_info_of_a_variant(capsys: pytest.CaptureFixture) -> None:
    """D0 as published: 3.9M parameters and 2.5B multiply-adds at 512 (the paper's 3.9M / 2.5B)."""
    assert main(["info", "efficientdet_d0", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["image_size"] == [512, 512] and round(doc["parameters"] / 1e6, 1) == 3.9
    assert round(doc["macs"] / 1e9, 1) == 2.5
    assert sum(doc["parameters_by_part"].values()) == doc["parameters"]


def test_info_of_an_exported_graph(tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("onnx")
    out = tmp_path / "model.onnx"
    assert main(["export", "--weights", str(tiny_weights), "--out", str(out), "--image-size", "128",
                 "--onnx-exporter", "torchscript"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{out}: efficientdet_lite0, input 128x128, 3 classes (cat, dog, cup), outputs raw" in printed
    assert "float32 (not quantized)" in printed
    assert main(["info", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["image_size"] == [128, 128] and doc["class_names"] == ["cat", "dog", "cup"] and doc["int8"] is None
    assert doc["bytes"] == out.stat().st_size and doc["config"]["head"]["num_classes"] == 3


def test_info_of_a_graph_with_nms_inside_shows_its_thresholds(
    tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture
) -> None:
    """The graph's own score threshold (which predict, eval and serve cannot go below) was only
    in ``--json``: the line said "outputs detections (NMS inside)"."""
    pytest.importorskip("onnx")
    out = tmp_path / "nms.onnx"
    assert main(["export", "--weights", str(tiny_weights), "--out", str(out), "--image-size", "128", "--nms",
                 "--score-threshold", "0.25", "--max-detections", "7", "--onnx-exporter", "torchscript"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "outputs detections (NMS inside: scores >= 0.25, IoU 0.5, at most 7 per image)" in printed


def test_info_errors_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["info", str(tmp_path / "missing.onnx")]) == 2
    assert "missing.onnx: no such file" in capsys.readouterr().err
    (tmp_path / "graphs.onnx").mkdir()  # was "no such file"
    assert main(["info", str(tmp_path / "graphs.onnx")]) == 2
    assert f"{tmp_path / 'graphs.onnx'}: is a folder, not an ONNX graph file" in capsys.readouterr().err
    (tmp_path / "other.onnx").write_bytes(b"")
    assert main(["info", str(tmp_path / "other.onnx")]) == 2
    assert "other.onnx: no efficientdet metadata" in capsys.readouterr().err
    assert main(["info", "efficientdet_d99"]) == 2
    capsys.readouterr()
    # Other files (a checkpoint, a TorchScript export) were "unknown model '<file>'; valid names: ..."
    (tmp_path / "model.pt").write_bytes(b"PK")
    assert main(["info", str(tmp_path / "model.pt")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'model.pt'}: info reads a model name" in err and "unknown model" not in err


def test_closed_pipe_is_not_a_traceback() -> None:
    """``efficientdet info efficientdet_d0 | head``: the reader leaves early. Here it leaves
    before the first line (``true`` reads nothing), so the write surely meets a closed pipe. A
    real shell pipeline: every descriptor belongs to the subprocess call and is closed by it."""
    command = f"{shlex.quote(sys.executable)} -m efficientdet info efficientdet_d0 | true; echo $" + "{PIPESTATUS[0]}"
    proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "141"  # 128 + SIGPIPE, as a shell reports it; not 1 with a traceback
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr


def test_ctrl_c_is_one_line_and_exit_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Ctrl-C outside training's handler (here while predict gathers its inputs) used to end in
    a KeyboardInterrupt traceback."""

    def interrupted(_sources: list[str], exclude: Path | None = None) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("efficientdet.cli.predict.collect_inputs", interrupted)
    assert main(["predict", str(tmp_path), "--weights", str(tmp_path / "w.safetensors"), "--out", str(tmp_path / "o")]) == 130
    assert capsys.readouterr().err == "efficientdet predict: interrupted\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--image-size", "0"], "--image-size 0: give H or H W, each a positive multiple of 32"),
        (["--image-size", "100"], "--image-size 100: give H or H W, each a positive multiple of 32"),
        (["--image-size", "320", "640", "960"], "--image-size 320 640 960: give H or H W"),
        (["--num-classes", "0"], "--num-classes 0: must be at least 1"),
        (["--num-classes", "-3"], "--num-classes -3: must be at least 1"),
    ],
)
def test_bad_size_or_class_count_is_one_line_naming_the_flag(
    argv: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    """These were a traceback (0 classes), torch's kernel-size or tensor-shape errors, or
    (three sizes) silently the first and the last."""
    assert main(["info", "efficientdet_lite0", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_size_and_classes_for_a_graph_are_refused_not_ignored(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``info m.onnx --image-size 320`` printed the graph's own 192x192 as if the flag had been read."""
    (tmp_path / "m.onnx").write_bytes(b"")
    for flag in (["--image-size", "320"], ["--num-classes", "5"]):
        assert main(["info", str(tmp_path / "m.onnx"), *flag]) == 2
        err = capsys.readouterr().err
        assert "m.onnx: --image-size and --num-classes are for model names" in err
    assert main(["info", "efficientdet_lite0", "--image-size", "320", "640", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["image_size"] == [320, 640]
