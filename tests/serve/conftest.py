"""A tiny random-init detector saved to disk, image files (good and hostile), and a real
``efficientdet serve`` process on a free 127.0.0.1 port, with a small HTTP client."""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import efficientdet

CLASS_NAMES = ["cat", "dog", "cup"]
IMAGE_SIZE = 128
SRC = Path(__file__).resolve().parents[2] / "src"


def make_model() -> efficientdet.EfficientDet:
    """Lite0 at 128 px, random init, with a class head spread out so that scores range over 0..1
    (a fresh head gives every anchor ~0.01: too many near-ties to compare answers)."""
    torch.manual_seed(0)
    model = efficientdet.create_model(
        "efficientdet_lite0", pretrained_backbone=False, image_size=IMAGE_SIZE, num_classes=3, class_names=CLASS_NAMES
    )
    with torch.no_grad():
        head = model.class_head.predict.pw
        head.weight.normal_(0.0, 10.0)
        head.bias.fill_(-2.5)
    return model.eval()


@pytest.fixture(scope="session")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("serve-model") / "tiny.safetensors"
    efficientdet.save_model(make_model(), path)
    return path


@pytest.fixture(scope="session")
def detector(weights: Path) -> efficientdet.Detector:
    """The offline Detector the server's answers are compared with."""
    return efficientdet.Detector(efficientdet.create_model(weights=str(weights)), device="cpu")


def scene(seed: int, size: tuple[int, int] = (150, 110)) -> Image.Image:
    """A small RGB picture: noise with a few filled shapes (``size`` is width, height)."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x, y = int(rng.integers(0, size[0] - 30)), int(rng.integers(0, size[1] - 30))
        draw.rectangle([x, y, x + 30, y + 25], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return image


@pytest.fixture(scope="session")
def image_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Four JPEGs and two PNGs of different sizes."""
    folder = tmp_path_factory.mktemp("serve-images")
    paths = []
    for i in range(6):
        path = folder / (f"img{i}.jpg" if i < 4 else f"img{i}.png")
        scene(i, (120 + 17 * i, 90 + 11 * i)).save(path, quality=90)
        paths.append(path)
    return paths


def png_bomb(width: int = 60000, height: int = 60000) -> bytes:
    """A valid PNG header for a ``width`` x ``height`` 1-bit image, with one tiny IDAT chunk
    (a few hundred bytes on the wire; decoding it would need gigabytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b"")


def jpeg_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


# ----------------------------------------------------------------------------- HTTP


def request(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request to 127.0.0.1:``port`` -> (status, headers (lower-case names), body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def multipart(fields: dict[str, str], files: dict[str, bytes]) -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body and its Content-Type header."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, data in files.items():
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.bin"\r\n'
        parts.append(head.encode() + b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def detect(port: int, data: bytes, query: str = "", as_form: bool = True, **fields: str) -> tuple[int, dict[str, Any]]:
    """POST /v1/detect with ``data`` as the multipart field 'image' (or the raw body)."""
    if as_form:
        body, headers = multipart(fields, {"image": data})
    else:
        body, headers = data, {"Content-Type": "application/octet-stream"}
    status, _, raw = request(port, "POST", f"/v1/detect{query}", body, headers)
    return status, json.loads(raw)


def metric(text: str, name: str) -> float:
    """The value of one sample line (``name`` includes its labels) of Prometheus text."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise KeyError(name)


# ----------------------------------------------------------------------------- the server process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``efficientdet serve`` in a subprocess on 127.0.0.1; ``stop()`` sends SIGTERM."""

    def __init__(self, weights: Path, log: Path, *extra: str) -> None:
        self.port = free_port()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
        cmd = [sys.executable, "-m", "efficientdet", "serve", "--weights", str(weights), "--device", "cpu",
               "--host", "127.0.0.1", "--port", str(self.port), *extra]  # fmt: skip
        self.log = log
        self.proc = subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
        self.wait_ready()

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if request(self.port, "GET", "/healthz", timeout=5)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.log.read_text()}")

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 60.0) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.terminate()
            try:
                return self.wait(60)
            finally:
                self.kill()
        return int(self.proc.returncode)


@pytest.fixture(scope="module")
def server(weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for a test module: batches of up to 8, a 1 MB upload limit."""
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    srv = Server(weights, log, "--max-batch", "8", "--max-wait-ms", "20", "--max-upload-mb", "1")
    yield srv
    assert srv.stop() == 0, log.read_text()
