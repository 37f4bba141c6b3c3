"""``serve --tile``: an upload smaller than a tile is a clear 422 for that request alone (it
was a plain-text 500, and so was every other request batched with it)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .conftest import Server, detect, jpeg_bytes, scene


def test_an_image_smaller_than_the_tile_is_422_and_its_batch_still_answers(weights: Path, tmp_path: Path) -> None:
    server = Server(weights, tmp_path / "server.log", "--tile", "128", "--max-batch", "8", "--max-wait-ms", "50")
    try:
        small, large = jpeg_bytes(scene(1, (150, 100))), jpeg_bytes(scene(2, (300, 200)))
        status, answer = detect(server.port, small)
        assert status == 422 and answer["error"]["code"] == "image_too_small", answer
        assert answer["error"]["message"] == "the image is 150x100 pixels, smaller than this server's --tile 128 on a side"
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda data: detect(server.port, data), [small, large] * 3))
        assert [status for status, _ in answers] == [422, 200] * 3
        assert all(a["image"] == {"width": 300, "height": 200} for s, a in answers if s == 200)
    finally:
        assert server.stop() == 0, (tmp_path / "server.log").read_text()
