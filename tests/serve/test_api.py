"""The API against a real ``efficientdet serve`` process: same detections as ``Detector``,
concurrent clients batched together, options, metrics, and hostile inputs answered 4xx."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

import efficientdet

from .conftest import CLASS_NAMES, IMAGE_SIZE, Server, detect, jpeg_bytes, metric, multipart, png_bomb, request, scene

THRESHOLD = 0.7


def assert_same(answer: dict[str, Any], expected: dict[str, Any], atol: float = 1e-3) -> None:
    """An API answer equals a Detector result: boxes [M, 4] (pixels), scores [M], labels, names."""
    dets = answer["detections"]
    assert len(dets) == len(expected["scores"]) > 0
    boxes = torch.tensor([d["box"] for d in dets])
    torch.testing.assert_close(boxes, expected["boxes"].float(), atol=atol, rtol=0)
    torch.testing.assert_close(torch.tensor([d["score"] for d in dets]), expected["scores"].float(), atol=1e-5, rtol=0)
    assert [d["label"] for d in dets] == expected["labels"].tolist()
    assert [d["name"] for d in dets] == expected["names"]


def test_health_model_and_page(server: Server) -> None:
    status, _, body = request(server.port, "GET", "/healthz")
    assert status == 200 and json.loads(body) == {"status": "ok", "model": "efficientdet_lite0"}
    status, _, body = request(server.port, "GET", "/v1/model")
    info = json.loads(body)
    assert status == 200
    assert info["name"] == "efficientdet_lite0" and info["classes"] == CLASS_NAMES
    assert info["input_size"] == [IMAGE_SIZE, IMAGE_SIZE] and info["backend"] == "torch"
    assert info["max_batch"] == 8 and info["max_upload_bytes"] == 1024 * 1024
    status, headers, body = request(server.port, "GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b'id="threshold"' in body and b"http://" not in body.replace(b"http://www.w3.org/2000/svg", b"")


def test_detections_equal_detector(server: Server, detector: efficientdet.Detector, image_files: list[Path]) -> None:
    expected = detector(image_files, score_threshold=THRESHOLD)
    for path, exp in zip(image_files, expected):
        data = path.read_bytes()
        status, answer = detect(server.port, data, score_threshold=str(THRESHOLD))
        assert status == 200, answer
        assert answer["model"] == "efficientdet_lite0"
        w, h = scene_size(path)
        assert answer["image"] == {"width": w, "height": h}
        assert set(answer["time"]) == {"decode_ms", "inference_ms", "total_ms"}
        assert answer["time"]["total_ms"] >= answer["time"]["inference_ms"] > 0
        assert_same(answer, exp, atol=1e-4)
        # the raw body and the query string give the same answer
        status, raw = detect(server.port, data, f"?score_threshold={THRESHOLD}", as_form=False)
        assert status == 200 and raw["detections"] == answer["detections"]


def test_a_large_photo_is_decoded_reduced_as_the_detector_does(
    server: Server, detector: efficientdet.Detector, tmp_path: Path
) -> None:
    """A 600x450 JPEG for a 128 px model: decoded at 1/2 by the server as by ``Detector``, the
    answer in the photo's own pixels."""
    from efficientdet.data.images import load_for_model
    from efficientdet.data.reduced import ReducedImage

    path = tmp_path / "large.jpg"
    scene(1, (600, 450)).save(path, quality=90)
    assert isinstance(load_for_model(path, (IMAGE_SIZE, IMAGE_SIZE)), ReducedImage)
    [expected] = detector([path], score_threshold=THRESHOLD)
    status, answer = detect(server.port, path.read_bytes(), score_threshold=str(THRESHOLD))
    assert status == 200, answer
    assert answer["image"] == {"width": 600, "height": 450}
    assert_same(answer, expected, atol=1e-3)


def scene_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def test_options_classes_and_max_detections(server: Server, detector: efficientdet.Detector, image_files: list[Path]) -> None:
    [exp] = detector([image_files[1]], score_threshold=0.5)
    data = image_files[1].read_bytes()
    status, top2 = detect(server.port, data, score_threshold="0.5", max_detections="2")
    assert status == 200 and [d["score"] for d in top2["detections"]] == pytest.approx(exp["scores"][:2].tolist(), abs=1e-5)
    label = int(exp["labels"][0])
    status, only = detect(server.port, data, score_threshold="0.5", classes=CLASS_NAMES[label])
    keep = exp["labels"] == label
    assert status == 200 and len(only["detections"]) == int(keep.sum())
    assert {d["name"] for d in only["detections"]} == {CLASS_NAMES[label]}
    status, by_index = detect(server.port, data, score_threshold="0.5", classes=str(label))
    assert by_index["detections"] == only["detections"]
    status, _, body = request(server.port, "GET", "/v1/model")
    status, default = detect(server.port, data)  # the server's default threshold (0.3)
    assert status == 200 and min(d["score"] for d in default["detections"]) >= json.loads(body)["default_score_threshold"]


def test_concurrent_clients_are_batched(server: Server, detector: efficientdet.Detector, image_files: list[Path]) -> None:
    """8 clients, 64 requests: 64 correct answers, and /metrics shows batches of more than 1."""
    expected = detector(image_files, score_threshold=THRESHOLD)
    payloads = [p.read_bytes() for p in image_files]
    _, _, before = request(server.port, "GET", "/metrics")

    def client(c: int) -> list[tuple[int, int, dict[str, Any]]]:
        out = []
        for r in range(8):
            k = (c + r) % len(payloads)
            status, answer = detect(server.port, payloads[k], f"?score_threshold={THRESHOLD}", as_form=bool(r % 2))
            out.append((k, status, answer))
        return out

    with ThreadPoolExecutor(8) as pool:
        results = [item for chunk in pool.map(client, range(8)) for item in chunk]
    assert len(results) == 64
    for k, status, answer in results:
        assert status == 200, answer
        assert_same(answer, expected[k])
    _, _, after = request(server.port, "GET", "/metrics")
    text_before, text_after = before.decode(), after.decode()
    batches = metric(text_after, "efficientdet_batch_size_count") - metric(text_before, "efficientdet_batch_size_count")
    singles = metric(text_after, 'efficientdet_batch_size_bucket{le="1.0"}') - metric(
        text_before, 'efficientdet_batch_size_bucket{le="1.0"}'
    )
    images = metric(text_after, "efficientdet_batch_size_sum") - metric(text_before, "efficientdet_batch_size_sum")
    assert images == 64
    assert batches - singles >= 1 and batches < 64, (batches, singles)  # some batches held more than one image
    ok = 'efficientdet_requests_total{path="/v1/detect",status="200"}'
    assert metric(text_after, ok) - metric(text_before, ok) == 64
    assert "efficientdet_request_latency_seconds_bucket" in text_after and "efficientdet_queue_depth" in text_after


def truncated_jpeg() -> bytes:
    data = jpeg_bytes(scene(7, (160, 120)))
    return data[: len(data) // 2]


BAD_INPUTS = [
    # (case, body, as_form, fields, query, status, error code, words in the message)
    ("not an image", b"this is plain text, not a picture", True, {}, "", 400, "bad_image", "not an image"),
    ("empty body", b"", False, {}, "", 400, "empty_body", "empty"),
    ("empty file", b"", True, {}, "", 400, "empty_body", "empty"),
    ("truncated JPEG", None, True, {}, "", 400, "bad_image", "truncated"),
    ("PNG bomb", None, False, {}, "", 413, "too_many_pixels", "3,600,000,000 pixels"),
    ("over the size limit", b"\xff\xd8\xff" + b"\0" * (1024 * 1024 + 10), False, {}, "", 413, "upload_too_large", "limit"),
    ("over the size limit, form", b"\xff\xd8\xff" + b"\0" * (1024 * 1024 + 10), True, {}, "", 413, "upload_too_large", "limit"),
    ("bad score_threshold", None, True, {"score_threshold": "abc"}, "", 422, "bad_score_threshold", "expected a number"),
    ("score_threshold out of range", None, False, {}, "?score_threshold=1.5", 422, "bad_score_threshold", "0..1"),
    ("score_threshold nan", None, False, {}, "?score_threshold=nan", 422, "bad_score_threshold", "0..1"),
    ("unknown query field", None, False, {}, "?score=0.5", 422, "unknown_field", "'score'"),
    ("unknown class", None, True, {"classes": "zebra"}, "", 422, "bad_classes", "'zebra'"),
    ("bad max_detections", None, True, {"max_detections": "-1"}, "", 422, "bad_max_detections", "0..10000"),
]


@pytest.mark.parametrize(("case", "body", "as_form", "fields", "query", "status", "code", "words"), BAD_INPUTS,
                         ids=[c[0] for c in BAD_INPUTS])  # fmt: skip
def test_bad_input_is_a_4xx_json_error(
    server: Server, case: str, body: bytes | None, as_form: bool, fields: dict[str, str], query: str,
    status: int, code: str, words: str,
) -> None:  # fmt: skip
    if body is None:
        body = {"truncated JPEG": truncated_jpeg, "PNG bomb": png_bomb}.get(case, lambda: jpeg_bytes(scene(1)))()
    got, answer = detect(server.port, body, query, as_form=as_form, **fields)
    assert (got, answer["error"]["code"]) == (status, code), answer
    assert words in answer["error"]["message"]
    assert request(server.port, "GET", "/healthz")[0] == 200


def test_wrong_field_name_and_wrong_method(server: Server, image_files: list[Path]) -> None:
    body, headers = multipart({}, {"file": image_files[0].read_bytes()})
    status, _, raw = request(server.port, "POST", "/v1/detect", body, headers)
    answer = json.loads(raw)
    assert status == 422 and answer["error"]["code"] == "unknown_field" and "'image'" in answer["error"]["message"]
    body, headers = multipart({"score_threshold": "0.5"}, {})
    status, _, raw = request(server.port, "POST", "/v1/detect", body, headers)
    assert status == 422 and json.loads(raw)["error"]["code"] == "missing_image"
    assert request(server.port, "GET", "/v1/detect")[0] == 405
    # still healthy and still correct afterwards
    assert request(server.port, "GET", "/healthz")[0] == 200
    assert detect(server.port, image_files[0].read_bytes())[0] == 200


def test_unknown_path_and_wrong_method_answer_in_the_error_format(server: Server) -> None:
    """They were FastAPI's {"detail": "Not Found"} / {"detail": "Method Not Allowed"}, not the
    documented {"error": {"code", "message"}} every other error uses."""
    status, headers, raw = request(server.port, "GET", "/v1/detect")
    assert status == 405 and headers.get("allow") == "POST"
    assert json.loads(raw) == {"error": {"code": "method_not_allowed", "message": "GET is not allowed on /v1/detect (use POST)"}}
    status, _, raw = request(server.port, "POST", "/v1/detections")
    assert status == 404 and json.loads(raw)["error"]["code"] == "not_found"
    assert "no such path: /v1/detections" in json.loads(raw)["error"]["message"]
    for path in ("/", "/healthz"):  # HEAD (uptime monitors, load balancers) was a 405
        status, headers, raw = request(server.port, "HEAD", path)
        assert status == 200 and raw == b"" and int(headers["content-length"]) > 0
