"""Prometheus metrics of one app: requests by path and status, latency, batch sizes, queue depth.

Each app gets its own ``CollectorRegistry`` (no process-wide state), exposed at ``/metrics``.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "ServeMetrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)


class ServeMetrics:
    """The service's counters; ``render()`` gives the Prometheus text format."""

    def __init__(self, max_batch: int, queue_depth: Callable[[], float], in_progress: Callable[[], float]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "efficientdet_requests", "HTTP requests answered, by path and status code",
            ["path", "status"], registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "efficientdet_request_latency_seconds", "Time from request start to the answer, by path",
            ["path"], buckets=_LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        buckets = sorted({float(b) for b in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64) if b <= max_batch} | {max_batch})
        self.batch_size = Histogram(
            "efficientdet_batch_size", "Images per forward pass", buckets=buckets, registry=self.registry
        )
        self.batch_seconds = Histogram(
            "efficientdet_batch_seconds", "Time of one batch (pre-processing, network, NMS)",
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        depth = Gauge("efficientdet_queue_depth", "Images waiting for a forward pass", registry=self.registry)
        depth.set_function(queue_depth)
        busy = Gauge("efficientdet_requests_in_progress", "Admitted detect requests", registry=self.registry)
        busy.set_function(in_progress)

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        self.requests.labels(path=path, status=str(status)).inc()
        self.latency.labels(path=path).observe(seconds)

    def observe_batch(self, size: int, seconds: float) -> None:
        """Record one forward pass of ``size`` images."""
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def render(self) -> bytes:
        """The registry in Prometheus' text exposition format."""
        return generate_latest(self.registry)
