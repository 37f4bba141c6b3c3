"""Load benchmark of ``efficientdet serve`` (loopback only, bounded): throughput and p50/p99
latency at several client concurrencies, next to the offline ``Detector`` on the same files
at batch 1 and at ``--max-batch``.

    python benchmarks/serve_load.py --images ../shared/datasets/raccoon/images \
        --models efficientdet_lite0,efficientdet_d0 --concurrency 1,4,16 --requests 48

Models are random-init (no download) unless ``--weights`` is given; every model is saved to
a temporary checkpoint, served by a real ``efficientdet serve`` subprocess on a free
127.0.0.1 port, and sent the image files as raw bodies by client threads with keep-alive
connections. The offline numbers run in this process before the server starts (nothing else
runs meanwhile). End to end means file bytes -> detections in both cases.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def image_files(folder: str | None, count: int, tmp: Path) -> list[Path]:
    """Up to ``count`` JPEGs from ``folder``, or synthetic 640x480 JPEGs."""
    if folder:
        files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        return files[:count]
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        path = tmp / f"synthetic{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(path, quality=90)
        out.append(path)
    return out


class Offline:
    """The offline Detector on the same files (loaded once, warmed up at batch 1 and N)."""

    def __init__(self, weights: Path, files: list[Path], max_batch: int, threshold: float) -> None:
        import efficientdet

        self.detector = efficientdet.Detector(efficientdet.create_model(weights=str(weights)), device="cpu")
        self.files, self.max_batch, self.threshold = files, max_batch, threshold
        self.detector(files[:max_batch], score_threshold=threshold, batch_size=max_batch)
        self.detector(files[:2], score_threshold=threshold, batch_size=1)

    def batch1_ms(self) -> list[float]:
        """End-to-end ms of each file alone."""
        times = []
        for f in self.files:
            start = time.perf_counter()
            self.detector([f], score_threshold=self.threshold, batch_size=1)
            times.append(1000 * (time.perf_counter() - start))
        return times

    def batched_ips(self) -> float:
        """Images per second over the files in batches of ``max_batch``."""
        start = time.perf_counter()
        self.detector(self.files, score_threshold=self.threshold, batch_size=self.max_batch)
        return len(self.files) / (time.perf_counter() - start)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(weights: Path, port: int, args: argparse.Namespace, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)  # torch's intra-op threads in the server
    cmd = [sys.executable, "-m", "efficientdet", "serve", "--weights", str(weights), "--device", "cpu",
           "--port", str(port), "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
           "--max-queue", "256", "--score-threshold", str(args.score_threshold), "--malloc", args.malloc]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not become ready")


def load(port: int, payloads: list[bytes], concurrency: int, total: int) -> dict[str, float]:
    """``total`` requests from ``concurrency`` keep-alive clients: throughput and latencies (ms)."""
    lock = threading.Lock()
    next_index = [0]
    latencies: list[float] = []

    def client(_: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                i = next_index[0]
                if i >= total:
                    break
                next_index[0] += 1
            start = time.perf_counter()
            conn.request("POST", "/v1/detect", payloads[i % len(payloads)], {"Content-Type": "image/jpeg"})
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"status {resp.status}: {body[:200]!r}")
            with lock:
                latencies.append(time.perf_counter() - start)
        conn.close()

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client, range(concurrency)))
    wall = time.perf_counter() - start
    ms = [1000 * x for x in latencies]
    return {"ips": total / wall, "p50": percentile(ms, 0.5), "p99": percentile(ms, 0.99)}


def batch_mean(port: int) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith("efficientdet_batch_size_")}
    return values["efficientdet_batch_size_sum"] / max(1.0, values["efficientdet_batch_size_count"])


def bench_model(name: str, args: argparse.Namespace, files: list[Path], tmp: Path) -> list[str]:
    """Rounds of: offline batch 1, offline batch N, serve at each concurrency (medians over rounds)."""
    import efficientdet

    weights = Path(args.weights) if args.weights else tmp / f"{name}.safetensors"
    if not args.weights:
        efficientdet.save_model(efficientdet.create_model(name, pretrained_backbone=False), weights)
    off = Offline(weights, files, args.max_batch, args.score_threshold)
    port = free_port()
    proc = start_server(weights, port, args, tmp / f"{name}.log")  # idle while the offline part runs
    b1: list[float] = []
    batched: list[float] = []
    served: dict[int, list[dict[str, float]]] = {c: [] for c in args.concurrency}
    try:
        payloads = [f.read_bytes() for f in files]
        load(port, payloads, 2, 2 * args.max_batch)  # warm-up
        for r in range(args.rounds):
            b1 += off.batch1_ms()
            batched.append(off.batched_ips())
            for c in args.concurrency:
                served[c].append(load(port, payloads, c, max(args.requests, 4 * c) if c > 1 else len(files)))
            print(f"{name} round {r + 1}: offline b1 {statistics.median(b1):.1f} ms, batched {batched[-1]:.2f} img/s, "
                  + ", ".join(f"c{c} {served[c][-1]['ips']:.2f} img/s p50 {served[c][-1]['p50']:.0f} ms" for c in served),
                  flush=True)  # fmt: skip
        mean_batch = batch_mean(port)
    finally:
        proc.terminate()
        proc.wait(60)
    b1_ms, b_ips = statistics.median(b1), statistics.median(batched)
    rows = [f"| {name} | offline Detector, batch 1 | 1 | {1000 / b1_ms:.2f} | {b1_ms:.1f} | {percentile(b1, 0.99):.1f} | |",
            f"| {name} | offline Detector, batch {args.max_batch} | - | {b_ips:.2f} | | | |"]  # fmt: skip
    for c, results in served.items():
        ips = statistics.median(x["ips"] for x in results)
        p50 = statistics.median(x["p50"] for x in results)
        p99 = statistics.median(x["p99"] for x in results)
        note = f"p50 = {p50 / b1_ms:.2f}x offline" if c == 1 else f"{ips / b_ips:.2f}x offline batched img/s"
        rows.append(f"| {name} | serve, {c} client{'s' if c > 1 else ''} | {c} | {ips:.2f} | {p50:.1f} | {p99:.1f} | {note} |")
    rows.append(f"| {name} | (serve: mean batch size {mean_batch:.2f}) | | | | | |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="efficientdet_lite0,efficientdet_d0")
    p.add_argument("--weights", default=None, help="one checkpoint for every model (default: random init)")
    p.add_argument("--images", default=None, help="folder of JPEGs (default: synthetic 640x480)")
    p.add_argument("--num-images", type=int, default=16)
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--requests", type=int, default=48, help="requests per concurrency level (bounded)")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-wait-ms", type=float, default=10.0)
    p.add_argument("--score-threshold", type=float, default=0.3)
    p.add_argument("--threads", type=int, default=0, help="torch threads, offline and served alike (0: torch's default)")
    p.add_argument("--malloc", choices=("steady", "default"), default="steady", help="glibc heap policy, both sides")
    p.add_argument("--rounds", type=int, default=3, help="alternate offline and served runs this many times")
    args = p.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    if args.malloc == "steady":
        from efficientdet.benchmark.heap import steady_heap

        steady_heap()  # the offline Detector with the same heap policy as the server
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # the same for the offline Detector as for the server
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        files = image_files(args.images, args.num_images, tmp)
        header = ["| model | what | clients | img/s | p50 ms | p99 ms | goal ratio |", "|---|---|---|---|---|---|---|"]
        rows = []
        for name in args.models.split(","):
            rows += bench_model(name, args, files, tmp)
    import torch

    print(json.dumps({"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "max_batch": args.max_batch,
                      "max_wait_ms": args.max_wait_ms, "malloc": args.malloc, "rounds": args.rounds, "images": len(files)}))  # fmt: skip
    print("\n".join(header + rows))


if __name__ == "__main__":
    main()
