"""Serving an ONNX graph with NMS inside: it cannot answer below its own score threshold, so
such requests are a clear 422 (they were a plain-text 500 that also failed every other request
batched with them, and the page, which asks at 0.05, never worked with such a graph)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from efficientdet.serve.schemas import ApiError, parse_options

from .conftest import CLASS_NAMES, Server, detect, jpeg_bytes, make_model, request, scene


def test_parse_options_refuses_thresholds_below_the_models_floor() -> None:
    assert parse_options({"score_threshold": "0.5"}, CLASS_NAMES, 3, 0.6, min_threshold=0.5).score_threshold == 0.5
    assert parse_options({}, CLASS_NAMES, 3, 0.6, min_threshold=0.5).score_threshold == 0.6
    with pytest.raises(ApiError) as err:
        parse_options({"score_threshold": "0.1"}, CLASS_NAMES, 3, 0.6, min_threshold=0.5)
    assert err.value.status == 422 and err.value.code == "bad_score_threshold"
    assert "'0.1': must be at least 0.5" in err.value.message and "NMS inside" in err.value.message


def test_nms_graph_below_its_threshold_is_422_and_the_server_stays_up(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from efficientdet.export import export_onnx

    graph = export_onnx(make_model(), tmp_path / "nms.onnx", include_postprocess=True, score_threshold=0.5,
                        dynamo=False)  # fmt: skip
    server = Server(graph, tmp_path / "server.log", "--score-threshold", "0.6")
    try:
        status, _, body = request(server.port, "GET", "/v1/model")
        info = json.loads(body)
        assert status == 200 and info["backend"] == "onnxruntime" and info["min_score_threshold"] == 0.5
        image = jpeg_bytes(scene(3))
        status, answer = detect(server.port, image, score_threshold="0.05")  # what the page asks for
        assert status == 422, answer
        assert answer["error"]["code"] == "bad_score_threshold" and "at least 0.5" in answer["error"]["message"]
        status, answer = detect(server.port, image, score_threshold="0.5")
        assert status == 200 and all(d["score"] >= 0.5 for d in answer["detections"])
        status, answer = detect(server.port, image)  # the server's default, 0.6
        assert status == 200 and all(d["score"] >= 0.6 for d in answer["detections"])
    finally:
        assert server.stop() == 0, (tmp_path / "server.log").read_text()
