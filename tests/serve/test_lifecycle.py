"""Backpressure (a full queue answers 503 + Retry-After, then recovers), SIGTERM with requests
in flight (all answered, exit 0), a model that fails to load, and a fast-starting CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from .conftest import SRC, Server, detect, jpeg_bytes, metric, request, scene


def _burst(port: int, data: bytes, clients: int) -> list[tuple[int, dict[str, Any]]]:
    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(lambda _: detect(port, data), range(clients)))


def test_full_queue_gives_503_then_recovers(weights: Path, image_files: list[Path], tmp_path: Path) -> None:
    srv = Server(weights, tmp_path / "server.log", "--max-batch", "1", "--max-queue", "2", "--max-wait-ms", "0")
    try:
        data = image_files[0].read_bytes()
        results = _burst(srv.port, data, 12)
        statuses = sorted(status for status, _ in results)
        busy = [answer for status, answer in results if status == 503]
        assert busy and set(statuses) == {200, 503}, statuses
        assert statuses.count(200) >= 2
        assert all(answer["error"]["code"] == "queue_full" for answer in busy)
        # Retry-After on the refusal, and nothing piles up: the next requests are served
        headers = {}
        for _ in range(50):  # bounded: a 503 needs several concurrent requests, so this ends fast
            with ThreadPoolExecutor(6) as pool:
                answers = list(pool.map(lambda _: request(srv.port, "POST", "/v1/detect", data,
                                                          {"Content-Type": "image/jpeg"}), range(6)))  # fmt: skip
            refused = [h for s, h, _ in answers if s == 503]
            if refused:
                headers = refused[0]
                break
        assert headers.get("retry-after") == "1"
        for _ in range(4):  # one at a time: all served
            assert detect(srv.port, data)[0] == 200
        _, _, text = request(srv.port, "GET", "/metrics")
        assert metric(text.decode(), 'efficientdet_requests_total{path="/v1/detect",status="503"}') >= len(busy)
        assert metric(text.decode(), "efficientdet_requests_in_progress") == 0
    finally:
        assert srv.stop() == 0


def test_sigterm_answers_requests_in_flight_then_exits_0(weights: Path, tmp_path: Path) -> None:
    srv = Server(weights, tmp_path / "server.log", "--max-batch", "1", "--max-wait-ms", "0")
    try:
        data = jpeg_bytes(scene(5, (1600, 1200)))  # one at a time, a few tens of ms each
        ok = 'efficientdet_requests_total{path="/v1/detect",status="200"}'
        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(detect, srv.port, data) for _ in range(6)]
            in_flight = 0.0
            for _ in range(500):  # bounded wait until all 6 reached the server, some still in flight
                text = request(srv.port, "GET", "/metrics")[2].decode()
                in_flight = metric(text, "efficientdet_requests_in_progress")
                done = metric(text, ok) if ok in text else 0.0
                if in_flight + done >= 6:
                    break
                time.sleep(0.005)
            srv.terminate()
            results = [f.result(timeout=60) for f in futures]
        assert in_flight >= 1  # SIGTERM came with requests in flight
        assert [status for status, _ in results] == [200] * 6
        first = [d["score"] for d in results[0][1]["detections"]]
        for _, answer in results:
            assert [d["score"] for d in answer["detections"]] == first
        assert srv.wait(60) == 0, srv.log.read_text()
        with pytest.raises(ConnectionRefusedError):  # no longer accepting (the process is gone)
            request(srv.port, "GET", "/healthz", timeout=5)
    finally:
        srv.kill()


def test_unloadable_weights_exit_2_with_a_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    done = subprocess.run(
        [sys.executable, "-m", "efficientdet", "serve", "--weights", str(bad), "--port", "0"],
        capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(SRC), "PATH": ""},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "cannot load the model" in done.stderr and "bad.safetensors" in done.stderr


def test_cli_help_does_not_import_torch_or_fastapi() -> None:
    code = (
        "import sys, contextlib, io\nimport efficientdet.cli as cli\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    try:\n        cli.build_parser().parse_args(['serve', '--help'])\n"
        "    except SystemExit:\n        pass\n"
        "assert '--max-batch' in out.getvalue() and '--max-queue' in out.getvalue()\n"
        "print(sorted(m for m in ('torch', 'fastapi', 'uvicorn', 'starlette') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(SRC), "PATH": ""})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().replace("'", '"')) == []


def test_onnxruntime_backend_serves_the_same_detections(
    weights: Path, detector: Any, image_files: list[Path], tmp_path: Path
) -> None:
    """--backend onnxruntime: the graph is exported once into --onnx-cache and answers as
    ``Detector`` does (ONNX Runtime's outputs equal torch's within float rounding)."""
    pytest.importorskip("onnxruntime")
    srv = Server(weights, tmp_path / "server.log", "--backend", "onnxruntime", "--onnx-cache", str(tmp_path / "onnx"))
    try:
        info = json.loads(request(srv.port, "GET", "/v1/model")[2])
        assert info["backend"] == "onnxruntime"
        assert list((tmp_path / "onnx").glob("*.onnx"))
        [expected] = detector([image_files[3]], score_threshold=0.7)
        status, answer = detect(srv.port, image_files[3].read_bytes(), score_threshold="0.7")
        assert status == 200 and len(answer["detections"]) == len(expected["scores"]) > 0
        for got, box, score, name in zip(answer["detections"], expected["boxes"].tolist(), expected["scores"].tolist(),
                                         expected["names"]):  # fmt: skip
            assert got["box"] == pytest.approx(box, abs=1e-2) and got["score"] == pytest.approx(score, abs=1e-4)
            assert got["name"] == name
    finally:
        assert srv.stop() == 0
