"""``run_benchmark``: latency, throughput, memory and achieved GFLOP/s per backend and batch size."""

from __future__ import annotations

import importlib.util
import itertools
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from efficientdet.benchmark.heap import steady_heap as apply_steady_heap
from .notes import result_notes
from .measure import MemoryProbe, Timing, float_matmul_gflops, stopwatch, synthetic_images, time_calls
from . import INT8_BACKENDS
from .pipelines import BACKENDS, REFERENCE, Pipeline, image_files, make_pipeline

__all__ = ["BenchmarkResult", "BenchmarkRow", "check_backends", "run_benchmark"]

STAGES = ("decode", "preprocess", "network", "postprocess")
_PACKAGES = {
    "onnxruntime": "onnxruntime", "onnxruntime-nms": "onnxruntime", "onnxruntime-int8": "onnxruntime",
    "openvino": "openvino", "openvino-int8": "nncf", REFERENCE: "effdet",
}  # fmt: skip


@dataclass
class BenchmarkRow:
    """One backend x mode x batch size. Times are per batch (median over the iterations).

    ``mode``: ``network`` (preprocessed tensors in, raw head outputs out) or ``end-to-end``
    (JPEG files in, detections out). Stage times are set for end-to-end rows; their sum is
    the latency up to the medians' rounding. ``peak_memory_mb``: peak resident memory (GPU:
    allocated memory) above what was in use before this backend's first inference call, up
    to and including this row. ``faults_per_image``: minor page faults (first touches of
    fresh memory) per image during the timed calls. ``ratio_vs_effdet``: images/s divided by
    effdet's in the same mode and batch size (> 1: faster than the reference).
    """

    backend: str
    mode: str
    batch_size: int
    latency_ms: float
    p90_ms: float
    images_per_s: float
    gflops_per_s: float
    decode_ms: float | None = None
    preprocess_ms: float | None = None
    network_ms: float | None = None
    postprocess_ms: float | None = None
    postprocess_share: float | None = None
    peak_memory_mb: float | None = None
    faults_per_image: float | None = None
    ratio_vs_effdet: float | None = None
    vs_float_floor: float | None = None


@dataclass
class BenchmarkResult:
    """Everything one benchmark run measured; ``to_dict`` is the ``--json`` document.

    ``macs``: multiply-adds of one image's forward pass, which is what the paper and
    ``efficientdet info`` call "FLOPs" (D0 at 512: 2.5B). ``flops_per_image`` = 2 x macs, the
    hardware convention (a multiply-add is two floating-point operations), which achieved
    ``gflops_per_s`` uses: ``flops_per_image * images_per_s / 1e9``.
    """

    model: str
    image_size: tuple[int, int]
    parameters: int
    macs: int
    flops_per_image: int
    device: str
    threads: int
    batch_sizes: list[int]
    iterations: int
    warmup: int
    weights: str
    images: str
    versions: dict[str, str]
    rows: list[BenchmarkRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rounds: int = 1
    heap: str = "default"  # "steady": heap.steady_heap() was applied before measuring
    matmul_gflops: float | None = None  # float32 2048x2048 matmul rate here, ``threads`` threads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def row(self, backend: str, mode: str, batch_size: int) -> BenchmarkRow:
        for r in self.rows:
            if (r.backend, r.mode, r.batch_size) == (backend, mode, batch_size):
                return r
        raise KeyError(f"no row for {backend} / {mode} / batch {batch_size}")


def check_backends(backends: Sequence[str], compare_effdet: bool) -> None:
    """Refuse unknown backends and missing packages before any work is done."""
    for name in backends:
        if name not in BACKENDS:
            raise ValueError(f"unknown backend {name!r}; available backends: {', '.join(BACKENDS)}")
    wanted = list(backends) + ([REFERENCE] if compare_effdet else [])
    for name in wanted:
        package = _PACKAGES.get(name)
        if package and importlib.util.find_spec(package) is None:
            what = "--compare-effdet" if name == REFERENCE else f"backend {name}"
            pin = "effdet==0.4.1" if name == REFERENCE else package
            raise RuntimeError(f"{what} needs the {package} package, which is not installed (pip install {pin})")


def _versions(backends: Sequence[str], compare_effdet: bool) -> dict[str, str]:
    import torchvision

    out = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__}
    from importlib.metadata import version

    if any(b.startswith(("onnxruntime", "openvino")) for b in backends):
        out["onnxruntime"] = version("onnxruntime")  # the exports are checked in it
    if any(b.startswith("openvino") for b in backends):
        out["openvino"] = version("openvino")
    if "openvino-int8" in backends:
        out["nncf"] = version("nncf")
    if compare_effdet:
        out["effdet"] = version("effdet")
    return out


def _network_call(pipeline: Pipeline, inputs: Any) -> Callable[[], dict[str, float]]:
    clock = stopwatch(pipeline.sync)

    def once() -> dict[str, float]:
        t0 = clock()
        pipeline.network(inputs)
        return {"network": clock() - t0}

    return once


def _end_to_end_call(pipeline: Pipeline, paths: list[Path]) -> Callable[[], dict[str, float]]:
    clock = stopwatch(pipeline.sync)

    def once() -> dict[str, float]:
        t0 = clock()
        decoded = pipeline.decode(paths)
        t1 = clock()
        inputs, info = pipeline.preprocess(decoded)
        t2 = clock()
        outputs = pipeline.network(inputs)
        t3 = clock()
        pipeline.postprocess(outputs, info)
        t4 = clock()
        return {"decode": t1 - t0, "preprocess": t2 - t1, "network": t3 - t2, "postprocess": t4 - t3}

    return once


def _row(backend: str, mode: str, n: int, timing: Timing, flops: int, memory: float | None) -> BenchmarkRow:
    latency = timing.median_ms()
    per_s = n / (latency / 1000)
    row = BenchmarkRow(backend, mode, n, latency, timing.p90_ms(), per_s, flops * per_s / 1e9, peak_memory_mb=memory)
    if timing.faults is not None and timing.calls:
        row.faults_per_image = timing.faults / (timing.calls * n)
    if mode == "end-to-end":
        row.decode_ms, row.preprocess_ms, row.network_ms, row.postprocess_ms = (timing.median_ms(s) for s in STAGES)
        # Share of the median iteration's time (a ratio of medians is not bounded by 1).
        shares = [p / t for p, t in zip(timing.stages["postprocess"], timing.total) if t > 0]
        row.postprocess_share = sorted(shares)[len(shares) // 2] if shares else None
    return row


def run_benchmark(
    model: str,
    weights: str | os.PathLike[str] | None = None,
    image_size: int | tuple[int, int] | None = None,
    batch_sizes: Sequence[int] = (1, 8),
    backends: Sequence[str] = ("torch", "onnxruntime"),
    iterations: int = 20,
    warmup: int = 3,
    threads: int | None = None,
    device: str | torch.device = "cpu",
    compare_effdet: bool = False,
    images: str | os.PathLike[str] | None = None,
    compile: bool = False,
    onnx_exporter: str = "dynamo",
    score_threshold: float | None = None,
    log: Callable[[str], None] | None = None,
    rounds: int = 1,
    steady_heap: bool = False,
    calibration: str | os.PathLike[str] | None = None,
) -> BenchmarkResult:
    """Benchmark ``model`` on each of ``backends`` (and effdet with ``compare_effdet``).

    For every backend and batch size N: network-only and end-to-end (N image files decoded,
    preprocessed, run and post-processed as one batch) latency, throughput and, end-to-end,
    the per-stage breakdown. ``images``: a folder of real images (default: synthetic
    COCO-sized JPEGs). ``threads``: intra-op threads for torch and ONNX Runtime (default the
    physical cores). ``score_threshold``: our backends' score threshold before NMS (default the
    model's, 0.001 = COCO evaluation; ``efficientdet predict`` uses 0.3); effdet's predict path
    has no such option and always runs NMS on its top 5000. Backends run one after the other in this process;
    ``rounds`` > 1 repeats that ``rounds`` times in rotating order (each round ``warmup`` +
    ``iterations`` calls per row) and reports medians over all rounds, so that a machine whose
    speed drifts slows every backend alike; peak memory then comes from the first round.
    ``steady_heap``: first apply :func:`efficientdet.benchmark.heap.steady_heap` (glibc keeps freed memory, so no
    backend's timing depends on page faults; process-wide and permanent; the CLI's default).
    ``calibration``: the int8 backends' calibration data (a dataset or a folder
    of images, as ``export --calibration``; default the benchmark's images).
    See :class:`BenchmarkRow` and :class:`BenchmarkResult` for the definitions.
    """
    from ..export.runtime import physical_cores
    from efficientdet.models.flops import count_macs
    from .models import build_models

    say = log or (lambda _msg: None)
    backends = list(dict.fromkeys(backends))  # unique, in order
    check_backends(backends, compare_effdet)
    sizes = sorted({int(n) for n in batch_sizes})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if onnx_exporter not in ("dynamo", "torchscript"):
        raise ValueError(f"onnx_exporter must be 'dynamo' or 'torchscript', got {onnx_exporter!r}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device}: CUDA is not available on this machine; use cpu")
    size = (image_size, image_size) if isinstance(image_size, int) else image_size
    heap = "default"
    if steady_heap:
        heap = "steady" if apply_steady_heap() else "default (steady heap needs glibc)"
    threads = threads or physical_cores()
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory(prefix="efficientdet-bench-") as tmp:
            work = Path(tmp)
            if images is not None:
                files, source = image_files(images), os.fspath(images)
            else:
                files = synthetic_images(work / "images", max(max(sizes), 2))
                source = f"{len(files)} synthetic COCO-sized JPEGs (quality 90)"
            calib = _calibration_files(backends, calibration, files)
            say("building the model" + (" and the effdet reference" if compare_effdet else ""))
            ours, reference, described = build_models(model, size, weights, compare_effdet, work, files)
            config = ours.config
            assert config is not None
            macs = count_macs(config, config.image_size)
            result = BenchmarkResult(
                model=config.name,
                image_size=tuple(config.image_size),
                parameters=sum(p.numel() for p in ours.parameters()),
                macs=macs,
                flops_per_image=2 * macs,
                device=str(dev),
                threads=threads,
                batch_sizes=sizes,
                iterations=iterations,
                warmup=warmup,
                weights=described,
                images=source,
                versions=_versions(backends, compare_effdet),
                rounds=rounds,
                heap=heap,
                matmul_gflops=float_matmul_gflops(threads),
            )
            names = [("torch-compile" if b == "torch" and compile else b) for b in backends]
            runs = list(zip(names, backends)) + ([(REFERENCE, REFERENCE)] if reference is not None else [])
            kept: dict[str, Pipeline] = {}  # across rounds
            measured: dict[str, dict[tuple[str, int], tuple[Timing, float | None]]] = {}
            for r in range(rounds):
                for label, backend in runs[r % len(runs) :] + runs[: r % len(runs)]:
                    pipeline = kept.get(label)
                    if pipeline is None:
                        say(f"setting up {label}")
                        pipeline = make_pipeline(
                            backend, ours, dev, threads, work, compile, onnx_exporter, reference, calib
                        )
                        if score_threshold is not None and backend != REFERENCE:
                            pipeline.set_score_threshold(score_threshold)
                    timings = _measure(pipeline, files, sizes, iterations, warmup, dev, say, memory=r == 0)
                    for key, (timing, memory) in timings.items():
                        before = measured.setdefault(label, {}).get(key)
                        measured[label][key] = (timing, memory) if before is None else (before[0] + timing, before[1])
                    if rounds > 1:
                        kept[label] = pipeline
                    del pipeline
            kept.clear()
            for label, _ in runs:
                for (mode, n), (timing, memory) in measured[label].items():
                    result.rows.append(_row(label, mode, n, timing, 2 * macs, memory))
    finally:
        torch.set_num_threads(saved_threads)
    _set_ratios(result)
    if dev.type == "cpu" and result.matmul_gflops:
        for row in result.rows:
            floor_ms = result.flops_per_image * row.batch_size / (result.matmul_gflops * 1e9) * 1000
            row.vs_float_floor = row.latency_ms / floor_ms
    result.notes = result_notes(result, compare_effdet, onnx_exporter)
    if score_threshold is not None:
        result.notes.append(
            f"our backends drop scores below {score_threshold} before NMS (as `efficientdet predict "
            f"--score-threshold {score_threshold}` does); effdet's predict path has no such option."
        )
    return result


def _calibration_files(
    backends: Sequence[str], calibration: str | os.PathLike[str] | None, files: list[Path]
) -> list[Path]:
    """The int8 backends' calibration images (checked before any model is built)."""
    if not set(INT8_BACKENDS) & set(backends):
        return []
    if calibration is None:
        return files
    from ..export.calibration import calibration_files

    return calibration_files(calibration, 100)


def _measure(
    pipeline: Pipeline,
    files: list[Path],
    sizes: list[int],
    iterations: int,
    warmup: int,
    device: torch.device,
    say: Callable[[str], None],
    memory: bool = True,
) -> dict[tuple[str, int], tuple[Timing, float | None]]:
    """(mode, batch size) -> (timing, peak memory in MiB so far, or None if not ``memory``)."""
    out: dict[tuple[str, int], tuple[Timing, float | None]] = {}
    probe = MemoryProbe(device)
    if memory:
        probe.start()
    with torch.inference_mode():
        for n in sizes:
            paths = list(itertools.islice(itertools.cycle(files), n))
            started = time.perf_counter()
            if pipeline.network_only:
                inputs, _ = pipeline.preprocess(pipeline.decode(paths))
                timing = time_calls(_network_call(pipeline, inputs), warmup, iterations)
                out["network", n] = (timing, probe.peak_mb() if memory else None)
                del inputs
            timing = time_calls(_end_to_end_call(pipeline, paths), warmup, iterations)
            out["end-to-end", n] = (timing, probe.peak_mb() if memory else None)
            say(f"  {pipeline.name} batch {n}: done in {time.perf_counter() - started:.1f} s")
    return out


def _set_ratios(result: BenchmarkResult) -> None:
    ref = {(r.mode, r.batch_size): r.images_per_s for r in result.rows if r.backend == REFERENCE}
    for r in result.rows:
        if (r.mode, r.batch_size) in ref:
            r.ratio_vs_effdet = r.images_per_s / ref[(r.mode, r.batch_size)]
