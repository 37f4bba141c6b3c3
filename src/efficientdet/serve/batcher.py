"""Dynamic batching: concurrent requests share one forward pass of up to ``max_batch`` images.

Requests are *admitted* first (a bounded count: decoding and waiting included, so memory is
bounded), then *submitted* with their decoded image. One worker task takes the first waiting
image, waits at most ``max_wait_s`` for more (only while other admitted requests are still on
their way: a lone request runs at once) and runs the batch on a dedicated thread, so the event
loop stays free. A batch runs at the lowest score threshold among its requests and each answer
is then filtered at its own threshold: with hard NMS this equals running each image alone at
its threshold (a box is only suppressed by higher-scoring boxes, which pass any threshold it
passes; soft NMS likewise only decays a box by higher-scoring ones). Box fusion (WBF) is not
like that (lower boxes move higher ones): with ``mixed_thresholds=False`` a batch runs as one
forward pass per threshold in it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from ..data.reduced import DecodedImage

__all__ = ["DetectFn", "DynamicBatcher", "QueueFull", "filter_detections"]

# images (uint8 [3, H, W] each), score threshold -> one dict per image (boxes [M, 4], scores [M], labels [M], ...)
DetectFn = Callable[[list[DecodedImage], float], list[dict[str, Any]]]


class QueueFull(RuntimeError):
    """The bounded queue is full: answer 503 with Retry-After."""


@dataclass
class _Item:
    image: DecodedImage
    threshold: float
    future: asyncio.Future[dict[str, Any]] = field(repr=False)


def filter_detections(det: dict[str, Any], threshold: float) -> dict[str, Any]:
    """Keep the detections scoring at least ``threshold`` (tensors and the ``names`` list)."""
    keep = det["scores"] >= threshold
    out: dict[str, Any] = {k: v[keep] for k, v in det.items() if isinstance(v, torch.Tensor)}
    if "names" in det:
        out["names"] = [n for n, k in zip(det["names"], keep.tolist()) if k]
    return out


class DynamicBatcher:
    """Groups submitted images into batches for ``detect``; see the module docstring."""

    def __init__(
        self,
        detect: DetectFn,
        max_batch: int = 8,
        max_wait_s: float = 0.010,
        max_queue: int = 64,
        on_batch: Callable[[int, float], None] | None = None,
        mixed_thresholds: bool = True,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or not max_wait_s >= 0:  # nan waited without bound
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait_s >= 0")
        self.detect = detect
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.on_batch = on_batch  # (batch size, seconds) after each forward pass
        self.mixed_thresholds = mixed_thresholds  # False: one threshold per forward pass (WBF)
        self.admitted = 0  # requests holding a slot: decoding, queued or running
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="detect")
        self._task: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        """Images waiting for a forward pass (not counting the batch running now)."""
        return self._queue.qsize()

    def start(self) -> None:
        """Start the worker task (call from the running event loop)."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Finish every submitted image, then stop the worker and its thread."""
        if self._task is not None:
            await self._queue.put(None)
            await self._task
            self._task = None
        self._executor.shutdown(wait=True)

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Admission: hold one of ``max_queue`` slots for a request's lifetime; QueueFull if none."""
        if self.admitted >= self.max_queue:
            raise QueueFull(f"{self.admitted} requests in progress (--max-queue {self.max_queue})")
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1

    async def submit(self, image: DecodedImage, threshold: float) -> dict[str, Any]:
        """Detections for one uint8 ``[3, H, W]`` image (or a reduced one), at ``threshold``, once its batch has run."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Item(image, threshold, future))
        return await future

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            if first is None:
                return
            items, stop = await self._fill([first])
            await self._process(items)
            if stop:
                return

    async def _fill(self, items: list[_Item]) -> tuple[list[_Item], bool]:
        """Add waiting images to ``items`` up to max_batch, waiting at most max_wait_s for
        requests that are admitted but not yet submitted; True when the stop sentinel came."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while len(items) < self.max_batch:
            if self._queue.empty():
                others_coming = self.admitted > len(items)
                remaining = deadline - loop.time()
                if not others_coming or remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except asyncio.TimeoutError:  # the builtin TimeoutError from Python 3.11
                    break
            else:
                item = self._queue.get_nowait()
            if item is None:
                return items, True
            items.append(item)
        return items, False

    async def _process(self, items: list[_Item]) -> None:
        thresholds = sorted({item.threshold for item in items})
        if not self.mixed_thresholds and len(thresholds) > 1:
            for t in thresholds:
                await self._process([item for item in items if item.threshold == t])
            return
        loop = asyncio.get_running_loop()
        threshold = min(item.threshold for item in items)
        start = loop.time()
        try:
            dets = await loop.run_in_executor(self._executor, self.detect, [i.image for i in items], threshold)
        except Exception as exc:  # deliberately broad: the requests get the error, not the worker
            if len(items) == 1:
                if not items[0].future.done():
                    items[0].future.set_exception(exc)
                return
            # one bad image must not fail the requests batched with it: each alone again
            for item in items:
                await self._process([item])
            return
        if self.on_batch is not None:
            self.on_batch(len(items), loop.time() - start)
        for item, det in zip(items, dets):
            if not item.future.done():  # a client that went away cancelled its future
                item.future.set_result(filter_detections(det, item.threshold))
