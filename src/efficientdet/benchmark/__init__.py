"""Inference benchmark: latency, throughput, memory and achieved GFLOP/s per backend.

Quick use::

    from efficientdet.benchmark import run_benchmark, render_table
    result = run_benchmark("efficientdet_d0", batch_sizes=(1, 4), compare_effdet=True)
    print(render_table(result))

The command line is ``efficientdet benchmark MODEL`` (``efficientdet.cli.benchmark``).
Definitions of every number are in :class:`BenchmarkRow`, :class:`BenchmarkResult` and
``efficientdet.benchmark.pipelines`` (what each backend's stages run).
"""

from .pipelines import BACKENDS, REFERENCE
from .report import render_table
from .runner import BenchmarkResult, BenchmarkRow, check_backends, run_benchmark

__all__ = ["BACKENDS", "REFERENCE", "BenchmarkResult", "BenchmarkRow", "check_backends", "render_table", "run_benchmark"]
