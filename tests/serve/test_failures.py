"""A detector that fails on one image: that request gets a JSON 500 naming the failure, the
requests batched with it are answered, and the server stays up (a real uvicorn on loopback)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch

pytest.importorskip("fastapi")
import uvicorn

from efficientdet.data.reduced import DecodedImage, full_size
from efficientdet.serve.app import ServedModel, ServeLimits, create_app
from efficientdet.serve.batcher import DynamicBatcher

from .conftest import detect, free_port, jpeg_bytes, request, scene

BAD_WIDTH = 77  # the fake detector fails on images of this width


def _detect(images: list[DecodedImage], threshold: float) -> list[dict[str, Any]]:
    """One box covering each image, score 0.9; a RuntimeError for the whole batch if any image
    is ``BAD_WIDTH`` wide (as a real detector fails a batch on one image)."""
    sizes = [full_size(im) for im in images]
    if any(w == BAD_WIDTH for _, w in sizes):
        raise RuntimeError("cannot handle this one")
    return [
        {"boxes": torch.tensor([[0.0, 0.0, float(w), float(h)]]), "scores": torch.tensor([0.9]),
         "labels": torch.tensor([0]), "names": ["thing"]}
        for h, w in sizes
    ]  # fmt: skip


def _model() -> ServedModel:
    return ServedModel(detect=_detect, name="fake", image_size=(64, 64), num_classes=1, class_names=["thing"],
                       backend="fake", max_input_pixels=10**7)  # fmt: skip


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    app = create_app(_model, ServeLimits(max_batch=8, max_wait_ms=100.0))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield server.config.port
    server.should_exit = True
    thread.join(timeout=30)


def test_a_detector_failure_is_a_json_500_for_that_request_only(port: int) -> None:
    bad, good = jpeg_bytes(scene(1, (BAD_WIDTH, 60))), jpeg_bytes(scene(2, (120, 90)))
    status, answer = detect(port, bad)
    assert status == 500
    assert answer == {"error": {"code": "internal_error", "message":
                      "the detector failed on this image: RuntimeError: cannot handle this one"}}  # fmt: skip
    with ThreadPoolExecutor(6) as pool:  # batched together (max_wait 100 ms): the good ones still answer
        answers = list(pool.map(lambda data: detect(port, data), [bad, good] * 3))
    assert [s for s, _ in answers] == [500, 200] * 3
    assert all(a["detections"][0]["box"] == [0.0, 0.0, 120.0, 90.0] for s, a in answers if s == 200)
    status, _, body = request(port, "GET", "/healthz")
    assert status == 200 and b'"ok"' in body


def test_a_failing_batch_retries_its_images_one_by_one() -> None:
    calls: list[int] = []

    def detect_fn(images: list[DecodedImage], threshold: float) -> list[dict[str, Any]]:
        calls.append(len(images))
        return _detect(images, threshold)

    batcher = DynamicBatcher(detect_fn, max_batch=4, max_wait_s=0.2, max_queue=8)
    widths = [50, BAD_WIDTH, 60, 70]

    async def main() -> list[Any]:
        async def one(w: int) -> Any:
            with batcher.slot():
                await asyncio.sleep(0)
                return await batcher.submit(torch.zeros(3, 10, w, dtype=torch.uint8), 0.5)

        batcher.start()
        try:
            return await asyncio.gather(*(one(w) for w in widths), return_exceptions=True)
        finally:
            await batcher.stop()

    results = asyncio.run(main())
    assert calls == [4, 1, 1, 1, 1]  # the batch, then each image alone
    assert isinstance(results[1], RuntimeError)
    assert [r["boxes"][0, 2].item() for i, r in enumerate(results) if i != 1] == [50.0, 60.0, 70.0]
