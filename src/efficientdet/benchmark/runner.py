"""``run_benchmark``: latency, throughput, memory and achieved GFLOP/s per backend and batch size."""

from __future__ import annotations

import functools
import importlib.util
import itertools
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from efficientdet.benchmark.heap import steady_heap as apply_steady_heap

from ..models.efficientdet import EfficientDet
from .inputs import benchmark_images, calibration_images
from .measure import MemoryProbe, Timing, float_matmul_gflops, stopwatch, time_calls
from .notes import result_notes
from .pipelines import BACKENDS, REFERENCE, Pipeline, make_pipeline
from .result import BenchmarkInterrupted, BenchmarkResult, BenchmarkRow

__all__ = ["check_backends", "run_benchmark"]

STAGES = ("decode", "preprocess", "network", "postprocess")
_PACKAGES = {
    "onnxruntime": "onnxruntime", "onnxruntime-nms": "onnxruntime", "onnxruntime-int8": "onnxruntime",
    "openvino": "openvino", "openvino-int8": "nncf", REFERENCE: "effdet",
}  # fmt: skip


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
    onnx_exporter: str = "torchscript",
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
    from .models import build_models

    say = log or (lambda _msg: None)
    backends = list(dict.fromkeys(backends))  # unique, in order
    sizes, dev = _checked_options(backends, compare_effdet, batch_sizes, rounds, onnx_exporter, device)
    size = (image_size, image_size) if isinstance(image_size, int) else image_size
    heap = _heap(steady_heap)
    threads = threads or physical_cores()
    with _torch_threads(threads), tempfile.TemporaryDirectory(prefix="efficientdet-bench-") as tmp:
        work = Path(tmp)
        files, source = benchmark_images(images, work, sizes)
        calib = calibration_images(backends, calibration, files)
        say("building the model" + (" and the effdet reference" if compare_effdet else ""))
        ours, reference, described = build_models(model, size, weights, compare_effdet, work, files)
        versions = _versions(backends, compare_effdet)
        result = _new_result(ours, dev, threads, sizes, iterations, warmup, described, source, versions, rounds, heap)
        runs = _runs(backends, compile, reference is not None)
        setup = functools.partial(
            make_pipeline, model=ours, device=dev, threads=threads, workdir=work, compile=compile,
            onnx_exporter=onnx_exporter, reference=reference, calibration=calib, score_threshold=score_threshold,
        )  # fmt: skip
        measured, interrupted = _measure_rounds(runs, rounds, setup, files, sizes, iterations, warmup, dev, say)
        result.rows.extend(_rows(runs, measured, result.flops_per_image))
    _finish(result, dev, compare_effdet, onnx_exporter, score_threshold, interrupted)
    if interrupted:  # the rows measured before Ctrl-C, as predict keeps its detections so far
        raise BenchmarkInterrupted(result)
    return result


def _checked_options(
    backends: list[str],
    compare_effdet: bool,
    batch_sizes: Sequence[int],
    rounds: int,
    onnx_exporter: str,
    device: str | torch.device,
) -> tuple[list[int], torch.device]:
    """``run_benchmark``'s options checked before any work is done -> (sorted batch sizes, device)."""
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
    on_cpu_only = [b for b in backends if b.startswith("openvino")]
    if dev.type != "cpu" and on_cpu_only:  # was refused at their setup, after the other backends ran
        raise ValueError(f"device {device}: the {', '.join(on_cpu_only)} backend(s) run on the CPU only; "
                         "benchmark them with device cpu")  # fmt: skip
    if dev.type == "cuda" and any(b.startswith("onnxruntime") for b in backends):
        from ..export.cache import onnx_providers

        onnx_providers(dev)  # an onnxruntime without CUDA: refused now, not after the other backends ran
    return sizes, dev


def _heap(steady_heap: bool) -> str:
    """The result's ``heap``, after applying :func:`~efficientdet.benchmark.heap.steady_heap` if asked."""
    if not steady_heap:
        return "default"
    return "steady" if apply_steady_heap() else "default (steady heap needs glibc)"


@contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads set to ``threads`` inside the block, restored after."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _new_result(
    ours: EfficientDet,
    device: torch.device,
    threads: int,
    sizes: list[int],
    iterations: int,
    warmup: int,
    described: str,
    source: str,
    versions: dict[str, str],
    rounds: int,
    heap: str,
) -> BenchmarkResult:
    """The description of the run, before any row is measured."""
    from efficientdet.models.flops import count_macs

    config = ours.config
    assert config is not None  # build_models gives a model of create_model, which sets it
    macs = count_macs(config, config.image_size)
    h, w = config.image_size
    return BenchmarkResult(
        model=config.name,
        image_size=(h, w),
        parameters=sum(p.numel() for p in ours.parameters()),
        macs=macs,
        flops_per_image=2 * macs,
        device=str(device),
        threads=threads,
        batch_sizes=sizes,
        iterations=iterations,
        warmup=warmup,
        weights=described,
        images=source,
        versions=versions,
        rounds=rounds,
        heap=heap,
        matmul_gflops=float_matmul_gflops(threads),
    )


def _runs(backends: list[str], compile: bool, with_reference: bool) -> list[tuple[str, str]]:
    """(row label, backend) of every pipeline to measure, effdet's last."""
    names = [("torch-compile" if b == "torch" and compile else b) for b in backends]
    return list(zip(names, backends)) + ([(REFERENCE, REFERENCE)] if with_reference else [])


def _measure_rounds(
    runs: list[tuple[str, str]],
    rounds: int,
    setup: Callable[[str], Pipeline],
    files: list[Path],
    sizes: list[int],
    iterations: int,
    warmup: int,
    device: torch.device,
    say: Callable[[str], None],
) -> tuple[dict[str, dict[tuple[str, int], tuple[Timing, float | None]]], bool]:
    """(Row label -> (mode, batch size) -> (timing joined over the rounds, peak memory of the
    first), whether Ctrl-C stopped it: then what was measured before, if anything).

    Each round measures every run, in an order rotated by one per round; a pipeline set up in
    the first round is kept for the others.
    """
    kept: dict[str, Pipeline] = {}  # across rounds
    measured: dict[str, dict[tuple[str, int], tuple[Timing, float | None]]] = {}
    try:
        for r in range(rounds):
            for label, backend in runs[r % len(runs) :] + runs[: r % len(runs)]:
                pipeline = kept.get(label)
                if pipeline is None:
                    say(f"setting up {label}")
                    pipeline = setup(backend)
                timings = _measure(pipeline, files, sizes, iterations, warmup, device, say, memory=r == 0)
                for key, (timing, memory) in timings.items():
                    before = measured.setdefault(label, {}).get(key)
                    measured[label][key] = (timing, memory) if before is None else (before[0] + timing, before[1])
                if rounds > 1:
                    kept[label] = pipeline
                del pipeline
    except KeyboardInterrupt:
        if not measured:
            raise
        return measured, True
    finally:
        kept.clear()
    return measured, False


def _rows(
    runs: list[tuple[str, str]], measured: dict[str, dict[tuple[str, int], tuple[Timing, float | None]]], flops: int
) -> list[BenchmarkRow]:
    """The result's rows of the runs' measurements, in the order of ``runs`` (those measured)."""
    return [
        _row(label, mode, n, timing, flops, memory)
        for label, _ in runs
        for (mode, n), (timing, memory) in measured.get(label, {}).items()
    ]


def _finish(
    result: BenchmarkResult,
    device: torch.device,
    compare_effdet: bool,
    onnx_exporter: str,
    score_threshold: float | None,
    interrupted: bool = False,
) -> None:
    """Fill in what compares the measured rows: ratios to effdet, float floors, notes."""
    _set_ratios(result)
    if device.type == "cpu" and result.matmul_gflops:
        for row in result.rows:
            floor_ms = result.flops_per_image * row.batch_size / (result.matmul_gflops * 1e9) * 1000
            row.vs_float_floor = row.latency_ms / floor_ms
    result.notes = result_notes(result, compare_effdet, onnx_exporter)
    if score_threshold is not None:
        result.notes.append(
            f"our backends drop scores below {score_threshold} before NMS (as `efficientdet predict "
            f"--score-threshold {score_threshold}` does); effdet's predict path has no such option."
        )
    if interrupted:
        result.notes.append(
            "interrupted (Ctrl-C): only the rows measured before it; a backend stopped mid-way has none, "
            "and with --rounds the backends may have different numbers of rounds."
        )


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
