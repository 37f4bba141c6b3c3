"""Inference benchmark: latency, throughput, memory and achieved GFLOP/s per backend.

Quick use::

    from efficientdet.benchmark import run_benchmark, render_table
    result = run_benchmark("efficientdet_d0", batch_sizes=(1, 4), compare_effdet=True)
    print(render_table(result))

The command line is ``efficientdet benchmark MODEL`` (``efficientdet.cli.benchmark``).
Definitions of every number are in :class:`BenchmarkRow`, :class:`BenchmarkResult` and
``efficientdet.benchmark.pipelines`` (what each backend's stages run).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from efficientdet.lazy import lazy_attributes

if TYPE_CHECKING:
    from .report import render_table
    from .result import BenchmarkInterrupted, BenchmarkResult, BenchmarkRow
    from .runner import check_backends, run_benchmark

# Backends that ``--backends`` accepts, and the reference's name (effdet). Defined here, not in
# pipelines.py, so that the CLI's parser lists them without importing torch.
BACKENDS: tuple[str, ...] = ("torch", "onnxruntime", "onnxruntime-nms", "onnxruntime-int8", "openvino", "openvino-int8")
INT8_BACKENDS: tuple[str, ...] = ("onnxruntime-int8", "openvino-int8")
REFERENCE = "effdet"

_LAZY = {
    "render_table": ".report",
    "BenchmarkInterrupted": ".result",
    "BenchmarkResult": ".result",
    "BenchmarkRow": ".result",
    "check_backends": ".runner",
    "run_benchmark": ".runner",
}
__getattr__, __dir__ = lazy_attributes(__name__, globals(), _LAZY)

__all__ = ["BACKENDS", "INT8_BACKENDS", "REFERENCE", "BenchmarkInterrupted", "BenchmarkResult", "BenchmarkRow", "check_backends", "render_table", "run_benchmark"]
