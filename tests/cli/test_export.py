"""efficientdet export: a checked ONNX file with NMS inside that runs like the Detector."""

from __future__ import annotations

import sys
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


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--format", "torchscript", "--nms"], "--nms is for --format onnx only"),
        (["--format", "exported-program", "--max-detections", "5"], "--max-detections is for --format onnx only"),
        (["--score-threshold", "0.5"], "--score-threshold sets the graph's own post-processing: it needs --nms"),
        (["--nms", "--score-threshold", "2"], "--score-threshold 2.0: must be in 0..1"),
        (["--nms", "--max-detections", "0"], "--max-detections 0: must be at least 1"),
        (["--batch-size", "0"], "--batch-size 0: must be at least 1"),
        (["--int8", "--calibration", ".", "--batch-size", "-2"], "--batch-size -2: must be at least 1"),
        (["--quantizer", "onnxruntime"], "--quantizer is an int8 option: add --int8"),
        (["--keep-float", "stem"], "--keep-float is an int8 option"),
        (["--out", "."], "--out .: is a folder; give the file to write, e.g. model.onnx"),
        (["--out", ".", "--format", "torchscript"], "e.g. model.pt"),
        (["--out", "m.pt"], "--out m.pt: an ONNX graph must be named *.onnx (predict, eval, serve and info "
                            "recognise it by that name), e.g. m.onnx"),
        (["--out", "m.onnx", "--format", "torchscript"], "--out m.onnx: a .onnx name is for --format onnx; "
                                                         "a torchscript file would be taken for a broken ONNX graph"),
        (["--out", "m.onnx", "--format", "exported-program"], "name it e.g. m.pt2"),
        (["--image-size", "200"], "--image-size 200: must be a positive multiple of 32"),
        (["--format", "exported-program", "--onnx-exporter", "torchscript"], "--onnx-exporter is for --format onnx only"),
        (["--format", "torchscript", "--static-batch"], "--static-batch: a TorchScript module has a dynamic batch"),
    ],
)
def test_flags_that_would_be_ignored_are_errors(
    tmp_path: Path,
    tiny_weights: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    extra: list[str],
    message: str,
) -> None:
    """These were silently dropped: ``--format torchscript --nms`` wrote a model without NMS,
    ``--quantizer onnxruntime`` without ``--int8`` a float graph, ``--nms --score-threshold 2``
    a graph that never detects anything; an --out folder was a traceback after the export.
    An ONNX graph written as ``m.pt`` was then refused by predict as "not model weights", a
    TorchScript file named ``m.onnx`` as "not a readable ONNX graph"; ``--image-size 200`` failed
    after loading without naming the flag ("image_size must be (h, w) ..."); ``--onnx-exporter``
    off ONNX and ``--static-batch`` with TorchScript were ignored; ``--batch-size 0`` failed after
    loading (and after reading the calibration images) as "batch_size must be >= 1"."""
    out = tmp_path / "m.out"
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--weights", str(tiny_weights), "--out", str(out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def test_out_under_a_file_is_refused_before_any_work(
    tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture
) -> None:
    """``--out m.onnx/x.onnx`` (a typo for a folder that is a file) ended in a FileExistsError
    traceback from the temp file's mkdir, after the whole export (30 s for Lite0 here)."""
    (tmp_path / "m.onnx").write_bytes(b"an earlier graph")
    out = tmp_path / "m.onnx" / "x.onnx"
    assert main(["export", "--weights", str(tiny_weights), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--out {out}: cannot create a folder under {tmp_path / 'm.onnx'}, which is a file" in err
    assert err.count("\n") == 1 and (tmp_path / "m.onnx").read_bytes() == b"an earlier graph"


def _images(folder: Path, count: int) -> Path:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
    return folder


@pytest.mark.parametrize("quantizer, backend", [("nncf", "openvino"), ("onnxruntime", "onnxruntime")])
def test_export_int8_runs_with_its_backend(
    tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture, quantizer: str, backend: str
) -> None:
    """export --int8 on a folder of images, then predict and eval run the file like any graph
    (NNCF's file in OpenVINO, ONNX Runtime's in ONNX Runtime; eval --compare: float next to it)."""
    if quantizer == "nncf":
        pytest.importorskip("nncf")
    from efficientdet.data.synthetic import make_synthetic_dataset
    from efficientdet.export import read_onnx_metadata

    data = make_synthetic_dataset(tmp_path / "data", num_images=4, image_size=(96, 128), seed=1)
    out = tmp_path / "model.int8.onnx"
    args = ["export", "--weights", str(tiny_weights), "--out", str(out), "--image-size", "128", "--int8",
            "--quantizer", quantizer, "--calibration", str(data), "--calibration-images", "3",
            "--keep-float", "heads,stem"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"int8 by {quantizer}: 3 calibration images" in printed and "float: heads, stem" in printed
    assert read_onnx_metadata(out).int8["float_groups"] == ["heads", "stem"]
    assert main(["info", str(out)]) == 0  # the file tells how it was made
    printed = capsys.readouterr().out
    assert f"int8 by {quantizer} (run it with --backend {backend}): 3 calibration images" in printed
    assert "float: heads, stem" in printed
    assert main(["predict", str(data.parent / "images"), "--weights", str(out), "--backend", backend,
                 "--out", str(tmp_path / "preds"), "--no-draw"]) == 0  # fmt: skip
    capsys.readouterr()
    # No --backend (auto): the file runs where it was made for, and the float checkpoint of
    # --compare in the same engine.
    assert main(["eval", str(data), "--weights", str(out), "--out", str(tmp_path / "ev"),
                 "--compare", str(tiny_weights), "--quiet"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert f"({backend}, int8)" in printed and "difference (first - second)" in printed
    assert f"{tiny_weights} ({backend})" in printed
    assert "paired resamples of the 4 images" in printed  # the difference's bootstrap interval
    import json

    doc = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert doc["backend"] == backend and doc["compare"]["backend"] == backend
    assert doc["compare"]["weights"] == str(tiny_weights) and "AP" in doc["compare"]["stats"]
    interval = doc["compare"]["ap_difference"]
    assert interval["difference"] == pytest.approx(doc["stats"]["AP"] - doc["compare"]["stats"]["AP"], abs=1e-9)
    assert interval["low"] <= interval["high"] and interval["images"] == 4


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--int8"], "--int8 needs --calibration"),
        (["--int8", "--calibration", "IMAGES", "--format", "torchscript"], "--int8 needs --format onnx"),
        (["--calibration", "IMAGES"], "--calibration is only used with --int8"),
        (["--int8", "--calibration", "EMPTY"], "no images"),
        (["--int8", "--calibration", "BROKEN"], "none of the 2 images could be read"),
        (["--int8", "--calibration", "MISSING"], "no such file or folder"),
        (["--int8", "--calibration", "IMAGES", "--calibration-method", "entropy"], "entropy does not apply to --quantizer nncf"),
        (["--int8", "--calibration", "IMAGES", "--image-size", "100"], "--image-size 100: must be a positive multiple of 32"),
        (["--int8", "--calibration", "IMAGES", "--onnx-exporter", "dynamo"], "--int8 always exports with the torchscript"),
        (["--int8", "--calibration", "IMAGES", "--keep-float", "head"], "--keep-float: unknown float group(s) head; valid:"),
    ],
)
def test_export_int8_bad_input(
    tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str
) -> None:
    (tmp_path / "EMPTY").mkdir()
    (tmp_path / "BROKEN").mkdir()
    for name in ("a.jpg", "b.png"):
        (tmp_path / "BROKEN" / name).write_bytes(b"not an image")
    _images(tmp_path / "IMAGES", 1)
    paths = {"IMAGES", "EMPTY", "BROKEN", "MISSING"}
    extra = [str(tmp_path / e) if e in paths else e for e in extra]
    out = tmp_path / "model.onnx"
    assert main(["export", "--weights", str(tiny_weights), "--out", str(out), "--image-size", "128", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith("model")]


def test_nncf_graph_in_onnxruntime_is_a_clear_error(tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture) -> None:
    """NNCF's int8 file is for OpenVINO (ONNX Runtime cannot run every NNCF graph): predict
    --backend onnxruntime says so and which backend to use."""
    pytest.importorskip("nncf")
    images = _images(tmp_path / "IMAGES", 2)
    out = tmp_path / "model.int8.onnx"
    assert main(["export", "--weights", str(tiny_weights), "--out", str(out), "--image-size", "128", "--int8",
                 "--calibration", str(images)]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["predict", str(images), "--weights", str(out), "--backend", "onnxruntime",
                 "--out", str(tmp_path / "preds")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "quantized by NNCF for OpenVINO" in err and "--backend openvino" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("blocked", "extra", "message"),
    [
        # were import tracebacks, after the model had loaded
        ("onnx", [], "--format onnx needs onnx, not installed here: pip install 'efficientdet[export]'"),
        ("onnxscript", [], "--format onnx needs onnxscript, not installed here: pip install 'efficientdet[export]'"),
        ("nncf", ["--int8", "--calibration", "DATA"],
         "--quantizer nncf needs NNCF and OpenVINO: pip install 'efficientdet[openvino]' (or --quantizer onnxruntime)"),
    ],
)  # fmt: skip
def test_a_missing_package_is_one_line_before_the_model_loads(
    blocked: str, extra: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:  # fmt: skip
    monkeypatch.setitem(sys.modules, blocked, None)  # find_spec then finds nothing, as when not installed
    weights = tmp_path / "missing.safetensors"  # loading it would be another error
    assert main(["export", "--weights", str(weights), "--out", str(tmp_path / "m.onnx"), *extra]) == 2
    assert capsys.readouterr().err == f"efficientdet export: error: {message}\n"


def test_the_torchscript_exporter_needs_no_onnxscript(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    args = ["export", "--weights", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "m.onnx"),
            "--onnx-exporter", "torchscript"]  # fmt: skip
    assert main(args) == 2
    assert "onnxscript" not in capsys.readouterr().err  # the weights are what is missing
