"""Run as a child process by ``test_openvino.py``: OpenVINO's compile cache gives back the
executables it stored, bit for bit, one per graph.

Why a child: OpenVINO's CPU plugin damages glibc's heap in some runs (see
openvino_preselect_check.py); its cache's export and import paths on top of the rest of the
suite's OpenVINO runs left pytest's own process to crash later (SIGSEGV), so this test keeps
its compilations out of that process.

Usage: python openvino_cache_check.py OUT_DIR
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

from efficientdet import create_model
from efficientdet.export import export_onnx
from efficientdet.export.openvino import OpenVinoDetector


def main(out: Path) -> None:
    """A Lite0 at 128 in two layouts; compiles with and without the cache compared."""
    torch.manual_seed(0)
    model = create_model("efficientdet_lite0", num_classes=3, image_size=128, pretrained_backbone=False).eval()
    raw = export_onnx(model, out / "raw.onnx", dynamo=False)
    candidates = export_onnx(model, out / "cand.onnx", candidates=True, dynamo=False)
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, 100, 120), dtype=torch.uint8, generator=g) for _ in range(2)]

    cache = out / "compiled"
    uncached = OpenVinoDetector(raw, compile_cache=False)
    batch = uncached.prepare(images).inputs
    want = uncached.run(batch)
    first = OpenVinoDetector(raw, compile_cache=cache).run(batch)
    blobs = sorted(cache.glob("*.blob"))
    assert len(blobs) == 1, blobs
    again = OpenVinoDetector(raw, compile_cache=cache).run(batch)
    assert sorted(cache.glob("*.blob")) == blobs  # loaded, not compiled anew
    for w, f, a in zip(want, first, again):
        np.testing.assert_array_equal(f, w)
        np.testing.assert_array_equal(a, w)
    OpenVinoDetector(candidates, compile_cache=cache).run(batch)
    assert len(list(cache.glob("*.blob"))) == 2  # another graph, its own executable

    os.environ["EFFICIENTDET_CACHE"] = str(out / "home-cache")
    detector = OpenVinoDetector(raw)  # the default folder follows $EFFICIENTDET_CACHE
    assert detector.compile_cache == out / "home-cache" / "openvino", detector.compile_cache
    detector.run(batch)
    assert len(list(detector.compile_cache.glob("*.blob"))) == 1

    blocker = out / "a-file"
    blocker.write_text("in the way")
    blocked = OpenVinoDetector(raw, compile_cache=blocker / "cache")  # cannot be made: no cache
    assert blocked.compile_cache is None
    for w, got in zip(want, blocked.run(batch)):
        np.testing.assert_array_equal(got, w)
    print("cache ok")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
