"""What a benchmark run measured: one :class:`BenchmarkRow` per backend x mode x batch size,
gathered in a :class:`BenchmarkResult` (the ``--json`` document)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["BenchmarkInterrupted", "BenchmarkResult", "BenchmarkRow"]


@dataclass
class BenchmarkRow:
    """One backend x mode x batch size. Times are per batch (median over the iterations).

    ``mode``: ``network`` (preprocessed tensors in, raw head outputs out) or ``end-to-end``
    (image files in, detections out). Stage times are set for end-to-end rows; their sum is
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


class BenchmarkInterrupted(KeyboardInterrupt):
    """Ctrl-C during ``run_benchmark`` after some rows were measured: ``result`` holds them
    (with a note saying so); a ``KeyboardInterrupt`` for callers that do not look."""

    def __init__(self, result: BenchmarkResult) -> None:
        super().__init__("benchmark interrupted")
        self.result = result
