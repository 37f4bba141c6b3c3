"""``predict`` / ``eval`` with ``--backend torch`` and ``--backend onnxruntime``: same detections.

One randomised Lite0 at 128 px (BN statistics calibrated, class logits spread out so scores
differ clearly) is exported once into a shared ONNX cache; every test reuses that graph.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from efficientdet import create_model, save_model
from efficientdet.cli import main
from efficientdet.data.synthetic import make_synthetic_dataset
from efficientdet.ops.boxes import box_iou

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

NAMES = ["circle", "square", "triangle"]
SIZE = 128


def _randomise_(model: nn.Module, seed: int) -> None:
    """Unit-scale random weights (the default init gives near-constant head outputs); class
    logits twice as wide, around -2, so scores spread over 0..1 instead of tying."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            else:  # BN scales, fusion weights: positive, around 1
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
        model.class_head.predict.pw.weight.mul_(2.0)
        model.class_head.predict.pw.bias.fill_(-2.0)


def _calibrate_bn_(model: nn.Module, seed: int) -> None:
    """BN running stats = the randomised network's own statistics (variance floored at 0.5, so
    float32 rounding is not amplified by near-constant channels: see tests/export/conftest.py)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed + 1)))
    for m in bns:
        m.momentum = 0.1
        m.running_var.clamp_(min=0.5)
    model.eval()


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = create_model("efficientdet_lite0", num_classes=3, image_size=SIZE, class_names=NAMES)
    _randomise_(model, 0)
    _calibrate_bn_(model, 0)
    path = tmp_path_factory.mktemp("weights") / "lite0_random.safetensors"
    save_model(model, path)
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Square images at the model's size: no resize or padding, so both eval paths see the same pixels.
    return make_synthetic_dataset(tmp_path_factory.mktemp("synth"), num_images=6, image_size=(SIZE, SIZE), seed=0)


@pytest.fixture(scope="module")
def images(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    files = sorted((dataset.parent / "images").rglob("*.jpg"))[:3]
    # Plus one of another size and aspect: exercises resize and padding on both backends.
    other = tmp_path_factory.mktemp("other") / "wide.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (150, 230, 3), dtype=np.uint8)).save(other)
    return [*files, other]


def _predict(images: list[Path], weights: Path | str, out: Path, backend: str, cache: Path, *extra: str) -> list[dict[str, Any]]:
    argv = ["predict", *map(str, images), "--weights", str(weights), "--out", str(out), "--backend", backend,
            "--onnx-cache", str(cache), "--device", "cpu", "--no-draw", "--score-threshold", "0.6", *extra]  # fmt: skip
    assert main(argv) == 0
    return json.loads((out / "detections.json").read_text())


def _tensors(entry: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dets = entry["detections"]
    boxes = torch.tensor([d["box"] for d in dets], dtype=torch.float32).reshape(-1, 4)
    return boxes, torch.tensor([d["score"] for d in dets]), torch.tensor([d["label"] for d in dets], dtype=torch.int64)


def _assert_same(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Same count; matched one to one by label, IoU > 0.99 (or corners within 0.02 px) and score
    within 1e-3; order free."""
    gb, gs, gl = _tensors(got)
    wb, ws, wl = _tensors(want)
    assert len(gb) == len(wb), (got["file"], len(gb), len(wb))
    if not len(gb):
        return
    ious = box_iou(gb, wb)
    # Boxes clipped flat against an image edge have zero area (IoU 0): equal corners match them.
    ious[(gb[:, None, :] - wb[None, :, :]).abs().amax(-1) <= 0.02] = 1.0
    used = torch.zeros(len(wb), dtype=torch.bool)
    for i in range(len(gb)):
        ok = (~used) & (wl == gl[i]) & ((ws - gs[i]).abs() <= 1e-3) & (ious[i] > 0.99)
        assert ok.any(), f"{got['file']}: detection {i} ({gl[i]}, {gs[i]:.4f}, {gb[i].tolist()}) has no match"
        used[int(torch.where(ok, ious[i], -1.0).argmax())] = True


def test_predict_same_detections(images: list[Path], weights: Path, cache: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    torch_out = _predict(images, weights, tmp_path / "torch", "torch", cache)
    onnx_out = _predict(images, weights, tmp_path / "onnx", "onnxruntime", cache)
    err = capsys.readouterr().err
    graphs = list(cache.glob("efficientdet_lite0-128x128-*.onnx"))
    assert len(graphs) == 1 and str(graphs[0]) in err  # says where the export went
    assert [e["file"] for e in torch_out] == [e["file"] for e in onnx_out] == [str(p) for p in images]
    assert sum(len(e["detections"]) for e in torch_out) >= 10  # a real comparison, not of empty sets
    for got, want in zip(onnx_out, torch_out):
        _assert_same(got, want)
        assert {d["name"] for d in got["detections"]} <= set(NAMES)  # class names from the metadata

    # Again: the cached graph is reused, not exported twice.
    _predict(images[:1], weights, tmp_path / "onnx2", "onnxruntime", cache)
    assert "using the cached graph" in capsys.readouterr().err
    assert len(list(cache.glob("*.onnx"))) == 1


def test_onnx_file_as_weights(images: list[Path], dataset: Path, weights: Path, cache: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    want = _predict(images, weights, tmp_path / "torch", "torch", cache)
    _predict(images[:1], weights, tmp_path / "export", "onnxruntime", cache)  # makes sure the graph exists
    [graph] = cache.glob("*.onnx")
    got = _predict(images, graph, tmp_path / "onnx", "onnxruntime", tmp_path / "unused-cache")
    assert not (tmp_path / "unused-cache").exists()  # an .onnx --weights is used as is
    for g, w in zip(got, want):
        _assert_same(g, w)
    capsys.readouterr()

    # The graph fixes the variant and the input size.
    base = ["predict", str(images[0]), "--weights", str(graph), "--backend", "onnxruntime", "--out", str(tmp_path / "x")]
    assert main([*base, "--model", "efficientdet_d0"]) == 2
    assert "is efficientdet_lite0, not efficientdet_d0" in capsys.readouterr().err
    assert main([*base, "--image-size", "256"]) == 2
    assert "fixed 128x128 input" in capsys.readouterr().err
    # An .onnx file is no torch checkpoint.
    assert main([*base[:-4], "--backend", "torch", "--out", str(tmp_path / "y")]) == 2
    assert "only with --backend onnxruntime" in capsys.readouterr().err
    # Without --backend (auto) a float graph runs in ONNX Runtime: the same detections.
    argv = ["predict", *map(str, images), "--weights", str(graph), "--out", str(tmp_path / "auto"), "--no-draw",
            "--score-threshold", "0.6"]  # fmt: skip
    assert main(argv) == 0
    for g, w in zip(json.loads((tmp_path / "auto" / "detections.json").read_text()), want):
        _assert_same(g, w)
    assert main(["eval", str(dataset), "--weights", str(graph), "--out",
                 str(tmp_path / "ev"), "--quiet", "--max-images", "2"]) == 0  # fmt: skip
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["backend"] == "onnxruntime"


def test_unreadable_graph_is_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A corrupt or missing .onnx: one line naming the file, whichever backend, no output folder."""
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf \xff\xff")
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(image)
    for backend in ("auto", "onnxruntime"):
        out = tmp_path / f"out-{backend}"
        assert main(["predict", str(image), "--weights", str(bad), "--backend", backend, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"{bad}: not a readable ONNX graph" in err and err.count("\n") == 1 and not out.exists()
        missing = tmp_path / "missing.onnx"
        assert main(["predict", str(image), "--weights", str(missing), "--backend", backend, "--out", str(out)]) == 2
        assert f"{missing}: no such file" in capsys.readouterr().err


def test_eval_same_ap(dataset: Path, weights: Path, cache: Path, tmp_path: Path) -> None:
    runs = {}
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / backend
        argv = ["eval", str(dataset), "--weights", str(weights), "--out", str(out), "--backend", backend,
                "--onnx-cache", str(cache), "--device", "cpu", "--quiet", "--nms", "soft"]  # fmt: skip
        assert main(argv) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["backend"] == backend and metrics["nms"] == "soft"
        runs[backend] = (metrics, json.loads((out / "detections_coco.json").read_text()))
    (m_t, d_t), (m_o, d_o) = runs["torch"], runs["onnxruntime"]
    assert m_t["num_images"] == m_o["num_images"] == 6
    for name, value in m_t["stats"].items():
        other = m_o["stats"][name]
        assert (value is None and other is None) or abs(value - other) <= 1e-3, (name, value, other)
    # The detections themselves: as many, and the confident ones the same.
    assert len(d_t) == len(d_o) > 0
    top_t = sorted((round(d["score"], 2), d["image_id"], d["category_id"]) for d in d_t if d["score"] > 0.6)
    top_o = sorted((round(d["score"], 2), d["image_id"], d["category_id"]) for d in d_o if d["score"] > 0.6)
    assert len(top_t) >= 10
    assert abs(len(top_t) - len(top_o)) <= 1  # a score at 0.6 +- float noise may sit on either side
    assert len(set(top_t) ^ set(top_o)) <= max(2, len(top_t) // 10)  # rounding to 0.01 can differ at edges


def test_options_the_onnx_path_cannot_honour(images: list[Path], weights: Path, cache: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    base = ["predict", str(images[0]), "--weights", str(weights), "--backend", "onnxruntime",
            "--onnx-cache", str(cache), "--out", str(tmp_path / "out")]  # fmt: skip
    assert main([*base, "--tta"]) == 2
    err = capsys.readouterr().err
    assert "--tta is not available with --backend onnxruntime" in err
    assert not (tmp_path / "out").exists()  # refused before any work


def test_missing_onnxruntime_names_the_extra(images: list[Path], weights: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    argv = ["predict", str(images[0]), "--weights", str(weights), "--backend", "onnxruntime", "--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "needs onnxruntime" in err and "pip install 'efficientdet[export]'" in err


@pytest.mark.parametrize("weights_name", ["w.safetensors", "m.int8.onnx"])
def test_missing_openvino_is_one_line_naming_the_extra(weights_name: str, images: list[Path], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """--backend openvino without OpenVINO was an ImportError traceback, install hint at its end."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    argv = ["predict", str(images[0]), "--weights", str(tmp_path / weights_name), "--backend", "openvino",
            "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == "efficientdet predict: error: the openvino backend needs OpenVINO: pip install 'efficientdet[openvino]'\n"


def test_openvino_backend_same_detections_and_ap(images: list[Path], dataset: Path, weights: Path, cache: Path,
                                                 tmp_path: Path) -> None:  # fmt: skip
    """--backend openvino: the exported graph in OpenVINO (float32) gives torch's detections and AP."""
    pytest.importorskip("openvino")
    want = _predict(images, weights, tmp_path / "torch", "torch", cache)
    got = _predict(images, weights, tmp_path / "ov", "openvino", cache)
    assert sum(len(e["detections"]) for e in want) >= 10
    for g, w in zip(got, want):
        _assert_same(g, w)
    stats = {}
    for backend in ("torch", "openvino"):
        out = tmp_path / f"eval-{backend}"
        argv = ["eval", str(dataset), "--weights", str(weights), "--out", str(out), "--backend", backend,
                "--onnx-cache", str(cache), "--device", "cpu", "--quiet"]  # fmt: skip
        assert main(argv) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["backend"] == backend
        stats[backend] = metrics["stats"]
    for name, value in stats["torch"].items():
        other = stats["openvino"][name]
        assert (value is None and other is None) or abs(value - other) <= 1e-3, (name, value, other)


class _Stop(Exception):
    pass


@pytest.mark.parametrize("device", [None, "cpu"])
def test_openvino_backend_asks_for_the_cpu_when_no_device_is_given(device: str | None, monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:  # fmt: skip
    """Without --device, OpenVINO was handed torch's default (CUDA where onnxruntime-gpu and a GPU
    exist) and refused to run: "the openvino backend runs on the CPU only" for a flag never given."""
    pytest.importorskip("openvino")
    import argparse

    from efficientdet.cli.common import build_runner
    from efficientdet.export.openvino import OpenVinoDetector

    def capture(weights: Any, cache: Any, **kwargs: Any) -> Any:
        raise _Stop(kwargs["device"])

    monkeypatch.setattr(OpenVinoDetector, "from_weights", capture)
    args = argparse.Namespace(backend="openvino", weights=str(tmp_path / "m.onnx"), device=device, tta=False,
                              max_input_pixels=None, onnx_cache=None, model=None, image_size=None, batch_size=1,
                              score_threshold=None)  # fmt: skip
    with pytest.raises(_Stop) as stop:
        build_runner(args, tmp_path)
    assert stop.value.args == ("cpu",)


def test_openvino_backend_on_cuda_names_the_backend(tmp_path: Path) -> None:
    """It said "this onnxruntime has no CUDA support ... install onnxruntime-gpu", which would not
    make OpenVINO run on a GPU."""
    pytest.importorskip("openvino")
    import argparse

    from efficientdet.cli.common import build_runner

    args = argparse.Namespace(backend="openvino", weights=str(tmp_path / "m.onnx"), device="cuda", tta=False,
                              max_input_pixels=None, onnx_cache=None, model=None, image_size=None, batch_size=1,
                              score_threshold=None)  # fmt: skip
    with pytest.raises(ValueError) as err:
        build_runner(args, tmp_path)
    assert str(err.value) == "--device cuda: --backend openvino runs on the CPU only; use --backend onnxruntime for CUDA"
