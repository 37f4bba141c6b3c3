"""Measuring tools for the benchmark: timers, a peak-memory probe and synthetic test images."""

from __future__ import annotations

import gc
import os
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from efficientdet.benchmark.heap import minor_faults, trim_heap

__all__ = ["MemoryProbe", "Timing", "percentile", "synthetic_images", "time_calls"]


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, linear interpolation (numpy's default)."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


@dataclass
class Timing:
    """Wall-clock samples (seconds) of one measured call, per stage; ``total`` is their sum.
    ``faults``: minor page faults during the timed calls (None where not measurable)."""

    stages: dict[str, list[float]]
    faults: int | None = None

    @property
    def calls(self) -> int:
        return len(next(iter(self.stages.values()), []))

    @property
    def total(self) -> list[float]:
        return [sum(parts) for parts in zip(*self.stages.values())]

    def median_ms(self, stage: str | None = None) -> float:
        return statistics.median(self.total if stage is None else self.stages[stage]) * 1000

    def p90_ms(self) -> float:
        return percentile(self.total, 90) * 1000

    def __add__(self, other: Timing) -> Timing:
        """Both runs' samples (the same stages), e.g. of two rounds."""
        if self.stages.keys() != other.stages.keys():
            raise ValueError(f"cannot join timings of stages {list(self.stages)} and {list(other.stages)}")
        faults = None if self.faults is None or other.faults is None else self.faults + other.faults
        return Timing({k: self.stages[k] + other.stages[k] for k in self.stages}, faults)


def time_calls(
    run_once: Callable[[], dict[str, float]], warmup: int, iterations: int
) -> Timing:
    """Call ``run_once`` ``warmup`` times untimed, then ``iterations`` times; it returns the
    seconds each of its stages took (``{"network": 0.012}``; it times itself, so the stages
    run back to back and their sum is the call's wall time)."""
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    for _ in range(max(0, warmup)):
        run_once()
    before = minor_faults()
    samples = [run_once() for _ in range(iterations)]
    after = minor_faults()
    faults = None if before is None or after is None else after - before
    return Timing({k: [s[k] for s in samples] for k in samples[0]}, faults)


def stopwatch(sync: Callable[[], None]) -> Callable[[], float]:
    """A clock that first waits for queued device work (``sync``), so GPU stages are timed whole."""

    def now() -> float:
        sync()
        return time.perf_counter()

    return now


# --------------------------------------------------------------------------- memory


def _status_kb(field: str) -> int | None:
    """``VmRSS`` / ``VmHWM`` of this process in kB from /proc (None where there is no /proc)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _release_free_memory() -> None:
    """Give freed heap pages back to the OS so the resident size counts live memory only.

    glibc keeps freed chunks (torch's CPU tensors are plain malloc'd) in its arenas: without
    this, a baseline taken after earlier work already includes that slack and the next peak
    would be underestimated.
    """
    gc.collect()
    trim_heap()


class MemoryProbe:
    """Peak memory used by the work done between :meth:`start` and :meth:`peak_mb`.

    CPU: the resident set's high-water mark (``VmHWM``, reset by writing 5 to
    ``/proc/self/clear_refs``) minus the resident size at ``start``, after freed heap memory
    was returned to the OS. Where the mark cannot be reset, ``ru_maxrss`` is used, which only
    shows growth beyond the process's earlier peak (a lower bound). CUDA: the allocator's
    ``max_memory_allocated`` minus what was allocated at ``start``.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.baseline_kb = 0
        self.resettable = False

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline_kb = torch.cuda.memory_allocated(self.device) // 1024
            return
        _release_free_memory()
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.resettable = True
        except OSError:
            self.resettable = False
        rss = _status_kb("VmRSS")
        self.baseline_kb = rss if rss is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def peak_mb(self) -> float:
        """Peak above the ``start`` baseline so far, in MiB (>= 0)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak_kb = torch.cuda.max_memory_allocated(self.device) // 1024
        else:
            hwm = _status_kb("VmHWM") if self.resettable else None
            peak_kb = hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return max(0, peak_kb - self.baseline_kb) / 1024


# --------------------------------------------------------------------------- images


def synthetic_images(folder: str | os.PathLike[str], count: int, seed: int = 0) -> list[Path]:
    """Write ``count`` photo-like JPEGs (quality 90) into ``folder``; returns their paths.

    COCO-like sizes (640x480, 480x640, 640x427, ...) so decoding and resizing cost what they
    cost on real data; content is smooth colour fields, rectangles and noise, so JPEG coding
    has real work (a flat image decodes unrealistically fast).
    """
    from PIL import Image

    sizes = [(480, 640), (640, 480), (427, 640), (640, 427), (512, 512), (375, 500)]
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        h, w = sizes[i % len(sizes)]
        # Low-resolution colour noise upsampled -> smooth gradients, then objects and grain.
        small = rng.uniform(0, 255, size=(h // 32 + 1, w // 32 + 1, 3)).astype(np.uint8)
        image = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
        for _ in range(8):
            y0, x0 = int(rng.integers(0, h - 16)), int(rng.integers(0, w - 16))
            y1, x1 = int(rng.integers(y0 + 8, h)), int(rng.integers(x0 + 8, w))
            image[y0:y1, x0:x1] = rng.uniform(0, 255, size=3)
        image += rng.normal(0, 6, size=image.shape)
        path = folder / f"synthetic_{i:03d}.jpg"
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def float_matmul_gflops(threads: int, side: int = 2048, repeats: int = 5) -> float:
    """This machine's float32 matrix-product rate (GFLOP/s, best of ``repeats``) with ``threads``
    threads: a practical ceiling for float convolutions, so ``flops / rate`` is a floor on any
    float backend's network time (only lower precision gets under it)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.randn(side, side)
        b = torch.randn(side, side)
        torch.mm(a, b)  # warm-up: thread pool, packing buffers
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(saved)
    return 2 * side**3 / best / 1e9
