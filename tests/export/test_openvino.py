"""OpenVinoDetector: the exported graphs run in OpenVINO give the detections ONNX Runtime gives
(float32, every layout), in batches of any size; bad options are clear errors."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

from efficientdet.export import OnnxDetector, export_onnx
from efficientdet.export.openvino import OpenVinoDetector

SIZE = (128, 192)


def _images(n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, 100 + 10 * i, 170 - 7 * i), dtype=torch.uint8, generator=g) for i in range(n)]


@pytest.fixture(scope="module")
def graphs(make_model: Callable, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Lite0 (randomised, BN calibrated) in the three layouts: raw, candidates, NMS inside."""
    model = make_model("efficientdet_lite0", SIZE)
    out = tmp_path_factory.mktemp("ov")
    return {
        "raw": export_onnx(model, out / "raw.onnx", dynamo=False),
        "candidates": export_onnx(model, out / "cand.onnx", candidates=True, dynamo=False),
        "nms": export_onnx(model, out / "nms.onnx", include_postprocess=True, dynamo=False),
    }


@pytest.mark.parametrize("layout", ["raw", "candidates", "nms"])
def test_openvino_matches_onnxruntime(graphs: dict[str, Path], layout: str, assert_same_detections: Callable) -> None:
    images = _images(3)
    want = OnnxDetector(graphs[layout])(images)
    got = OpenVinoDetector(graphs[layout])(images)
    assert len(got) == 3 and any(len(d["boxes"]) for d in want)
    for g, w in zip(got, want):
        assert g["names"] == w["names"]
        assert_same_detections(g, w, max_detections=100)


def test_raw_outputs_equal_to_float_rounding(graphs: dict[str, Path]) -> None:
    """float32 by default, also on CPUs whose OpenVINO default would be bfloat16."""
    reference = OnnxDetector(graphs["raw"])
    batch = reference.prepare(_images(2)).inputs
    for want, got in zip(reference.run(batch), OpenVinoDetector(graphs["raw"]).run(batch)):
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got, want, atol=2e-3 * float(np.abs(want).max()))


def test_batches_of_any_size_compile_once_each(graphs: dict[str, Path]) -> None:
    detector = OpenVinoDetector(graphs["candidates"], batch_size=2)
    one = detector(_images(1))
    three = detector(_images(3))  # batches of 2 and 1
    assert len(one) == 1 and len(three) == 3
    assert sorted(detector.compiled_batches()) == [1, 2]
    first = [float(s) for s in one[0]["scores"][:5]]
    assert first == pytest.approx([float(s) for s in three[0]["scores"][:5]], abs=1e-4)  # same image


def test_fixed_batch_graph_pads(make_model: Callable, tmp_path: Path) -> None:
    model = make_model("efficientdet_lite0", SIZE)
    path = export_onnx(model, tmp_path / "fixed.onnx", batch_size=2, dynamic_batch=False, dynamo=False)
    detector = OpenVinoDetector(path)
    assert detector.fixed_batch == 2 and detector.batch_size == 2
    assert len(detector(_images(3))) == 3


def test_threads_and_precision_options(graphs: dict[str, Path]) -> None:
    detector = OpenVinoDetector(graphs["raw"], intra_op_threads=1)
    assert detector.compile_config["INFERENCE_NUM_THREADS"] == 1
    assert detector.compile_config["INFERENCE_PRECISION_HINT"] == "f32"
    bf16 = OpenVinoDetector(graphs["raw"], precision="bf16")
    assert bf16.compile_config["INFERENCE_PRECISION_HINT"] == "bf16"
    with pytest.raises(ValueError, match="unknown OpenVINO precision 'fp8'"):
        OpenVinoDetector(graphs["raw"], precision="fp8")
    with pytest.raises(ValueError, match="CPU only"):
        OpenVinoDetector(graphs["raw"], providers=["CUDAExecutionProvider"])


def test_compiled_executables_are_cached_by_content(tmp_path: Path) -> None:
    """A second detector on a graph loads its executable from the cache, bit for bit; another
    graph gets its own; the default folder follows $EFFICIENTDET_CACHE; a folder that cannot be
    made means no cache, not an error (checked in a child process: see openvino_cache_check.py)."""
    script = Path(__file__).with_name("openvino_cache_check.py")
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, f"child failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert "cache ok" in done.stdout
