"""Plain-text rendering of a :class:`BenchmarkResult`."""

from __future__ import annotations

from .result import BenchmarkResult, BenchmarkRow

__all__ = ["render_table"]

_COLUMNS = (
    # header, width, value
    ("backend", 16, lambda r: r.backend),
    ("mode", 10, lambda r: r.mode),
    ("batch", 5, lambda r: str(r.batch_size)),
    ("ms/batch", 9, lambda r: f"{r.latency_ms:.1f}"),
    ("p90 ms", 8, lambda r: f"{r.p90_ms:.1f}"),
    ("img/s", 7, lambda r: f"{r.images_per_s:.2f}"),
    ("GFLOP/s", 8, lambda r: f"{r.gflops_per_s:.1f}"),
    ("decode", 7, lambda r: _ms(r.decode_ms)),
    ("pre", 7, lambda r: _ms(r.preprocess_ms)),
    ("net", 7, lambda r: _ms(r.network_ms)),
    ("post", 7, lambda r: _ms(r.postprocess_ms)),
    ("post%", 6, lambda r: "-" if r.postprocess_share is None else f"{100 * r.postprocess_share:.1f}"),
    ("peak MB", 8, lambda r: "-" if r.peak_memory_mb is None else f"{r.peak_memory_mb:.0f}"),
    ("faults/img", 10, lambda r: "-" if r.faults_per_image is None else f"{r.faults_per_image:.0f}"),
    ("vs effdet", 9, lambda r: "-" if r.ratio_vs_effdet is None else f"{r.ratio_vs_effdet:.2f}x"),
    ("x floor", 7, lambda r: "-" if r.vs_float_floor is None else f"{r.vs_float_floor:.2f}"),
)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _line(cells: list[str]) -> str:
    return "  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, (_, w, _)) in enumerate(zip(cells, _COLUMNS)))


def render_table(result: BenchmarkResult) -> str:
    """The result as a header, one line per row (stage columns: end-to-end medians in ms per
    batch) and the notes that define the numbers."""
    h, w = result.image_size
    lines = [
        f"{result.model} at {h}x{w} on {result.device}, {result.threads} threads, "
        f"{result.iterations} iterations after {result.warmup} warm-up"
        + (f", x {result.rounds} interleaved rounds (medians over all)" if result.rounds > 1 else ""),
        f"  parameters {result.parameters / 1e6:.2f}M ({result.parameters:,})",
        f"  MACs {result.macs / 1e9:.2f}B per image (the paper's \"FLOPs\"); "
        f"{result.flops_per_image / 1e9:.2f} GFLOP per image at 2 FLOPs per multiply-add",
        f"  weights: {result.weights}",
        *(
            [
                f"  float32 matmul peak here: {result.matmul_gflops:.0f} GFLOP/s (2048x2048, {result.threads} "
                f"threads) -> float floor {result.flops_per_image / result.matmul_gflops / 1e6:.1f} ms per image"
            ]
            if result.matmul_gflops
            else []
        ),
        f"  images: {result.images}",
        "  versions: " + ", ".join(f"{k} {v}" for k, v in result.versions.items()),
        "",
        _line([c[0] for c in _COLUMNS]),
        _line(["-" * c[1] for c in _COLUMNS]),
    ]
    rows: list[BenchmarkRow] = sorted(result.rows, key=lambda r: (r.mode != "network", r.batch_size))
    lines += [_line([c[2](r) for c in _COLUMNS]) for r in rows]
    lines.append("")
    lines += [f"* {note}" for note in result.notes]
    return "\n".join(lines)
