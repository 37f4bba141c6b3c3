"""OnnxDetector's post-processing of graphs with NMS inside."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from efficientdet import create_model
from efficientdet.export import OnnxDetector, export
from efficientdet.inference.protocol import Prepared

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def nms_graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained Lite0 at 128 with NMS inside (IoU 0.5, score threshold 0.2)."""
    model = create_model("efficientdet_lite0", num_classes=2, image_size=128).eval()
    path = tmp_path_factory.mktemp("nms") / "nms.onnx"
    return export(model, path, "onnx", include_postprocess=True, score_threshold=0.2, dynamo=False)


def test_duplicates_that_overlap_once_clipped_to_the_image_are_suppressed(nms_graph: Path) -> None:
    """The graph clips boxes to its whole 128x128 input, not to a portrait photo's 64 px wide
    region, so a box reaching into the padding (x2 = 120) overlaps its twin only 0.53 there
    and both came out; clipped to the photo they are the same box (IoU 1): one is kept, as
    ``Detector`` (which clips before NMS) keeps one. Another class's box and a box that
    overlaps little stay."""
    detector = OnnxDetector(nms_graph)
    boxes = np.zeros((1, 100, 4), np.float32)
    boxes[0, :4] = [[0, 10, 120, 70], [0, 10, 64, 70], [0, 10, 64, 70], [10, 90, 60, 120]]
    scores = np.zeros((1, 100), np.float32)
    scores[0, :4] = [0.9, 0.8, 0.7, 0.6]
    labels = np.full((1, 100), -1, np.int64)
    labels[0, :4] = [0, 0, 1, 0]
    outputs = [boxes, scores, labels, np.array([4], np.int64)]
    # A 256x128 (h x w) photo at scale 0.5 fills the input's left 64 columns.
    prepared = Prepared(torch.zeros(1, 3, 128, 128), torch.tensor([0.5]), [(256, 128)])
    [result] = detector.postprocess(outputs, prepared)
    assert result["scores"].tolist() == pytest.approx([0.9, 0.7, 0.6])
    assert result["labels"].tolist() == [0, 1, 0]
    assert result["boxes"].tolist() == [[0, 20, 128, 140], [0, 20, 128, 140], [20, 180, 120, 240]]


def test_a_postprocess_config_for_a_graph_with_nms_inside_is_refused(nms_graph: Path) -> None:
    # its max_detections / iou_threshold / nms were ignored without a word (only the call's score threshold applies)
    from efficientdet import PostprocessConfig

    with pytest.raises(ValueError, match=r"nms\.onnx: this graph runs NMS inside, .*postprocess_config applies to graphs"):
        OnnxDetector(nms_graph, postprocess_config=PostprocessConfig(max_detections=5))
    assert OnnxDetector(nms_graph).metadata.nms_inside
    with pytest.raises(TypeError, match=r"postprocess_config must be an efficientdet.PostprocessConfig, not dict"):
        OnnxDetector(nms_graph, postprocess_config={"max_detections": 5})  # type: ignore[arg-type]
