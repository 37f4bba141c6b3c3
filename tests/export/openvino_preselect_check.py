"""Run as a child process by ``test_quantize.py``: a 20-class model's NNCF file pre-selects its
candidates in the graph and gives the detections of the same network with raw outputs.

Why a child: OpenVINO's CPU plugin leaves glibc's heap checker reporting damage after some
inferences (seen with 2025.4 to 2026.4, on graphs without our code in them). Alone that is
harmless here, but this test's two int8 compilations at batch 2 on top of the rest of the suite's
OpenVINO runs left pytest's own process to crash later (SIGSEGV inside ``select.poll``). In a
child the test checks the same thing, and the parent's heap stays the parent's.

Usage: python openvino_preselect_check.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from efficientdet import create_model
from efficientdet.export import read_onnx_metadata
from efficientdet.export.openvino import OpenVinoDetector
from efficientdet.export.quantize import Int8Options, export_int8


def main(out: Path) -> None:
    """Export a 20-class Lite0 at 256 twice (auto layout, raw) and compare their outputs."""
    torch.manual_seed(0)
    size = 256  # 12276 anchors: more than the 5000 candidates, so the graph does select
    model = create_model("efficientdet_lite0", num_classes=20, image_size=size, pretrained_backbone=False).eval()
    for m in model.modules():  # random BN statistics: spread-out scores, few ties to order
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    calib = [torch.randint(0, 256, (3, size, size), dtype=torch.uint8) for _ in range(4)]
    options = Int8Options(quantizer="nncf", calibration_images=4)
    auto = export_int8(model, out / "auto.onnx", calib, options)
    raw = export_int8(model, out / "raw.onnx", calib, options, candidates=False)
    assert read_onnx_metadata(auto).candidates and not read_onnx_metadata(raw).candidates
    with_candidates, plain = OpenVinoDetector(auto), OpenVinoDetector(raw)
    batch = plain.prepare(calib[:2]).inputs
    logits, codes, rows = (torch.from_numpy(o) for o in with_candidates.run(batch)[:3])  # [N, C, K], [N, C, 4], [N, C]
    cls, box = (torch.from_numpy(o) for o in plain.run(batch)[:2])  # [N, T, K], [N, T, 4]
    # The same network (one NNCF run each, the same ranges), its float parts in OpenVINO's
    # bfloat16 on CPUs that have it: the graph's rows are the raw outputs' rows at its anchors...
    for i in range(2):
        assert torch.allclose(logits[i], cls[i, rows[i]], atol=0.05)
        assert torch.allclose(codes[i], box[i, rows[i]], atol=0.05)
        # ... and those anchors have the largest maxima (up to bfloat16 ties at the boundary)
        best = cls[i].amax(-1)
        chosen = torch.zeros_like(best, dtype=torch.bool)
        chosen[rows[i]] = True
        assert 0 < int(chosen.sum()) < best.numel()
        assert best[chosen].min() >= best[~chosen].max() - 0.05
    print("preselect ok")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
