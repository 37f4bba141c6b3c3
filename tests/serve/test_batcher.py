"""The dynamic batcher in-process, with a fake detector: batch composition, waiting, the
threshold rule, admission limits, errors and draining on stop."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch

from efficientdet.serve.batcher import DynamicBatcher, QueueFull, filter_detections


class FakeDetect:
    """Records each call's batch size and threshold; image i's detections have scores
    ``value/10, value/20`` where value is the image's first pixel."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[tuple[int, float]] = []
        self.delay = delay

    def __call__(self, images: list[torch.Tensor], threshold: float) -> list[dict[str, Any]]:
        import time

        time.sleep(self.delay)
        self.calls.append((len(images), threshold))
        out = []
        for im in images:
            v = float(im[0, 0, 0])
            scores = torch.tensor([v / 10, v / 20])
            keep = scores >= threshold
            out.append({"boxes": torch.tensor([[0.0, 0, v, v], [1, 1, 2, 2]])[keep], "scores": scores[keep],
                        "labels": torch.tensor([1, 2])[keep], "names": [n for n, k in zip(["a", "b"], keep) if k]})  # fmt: skip
        return out


def image(value: int) -> torch.Tensor:
    return torch.full((3, 4, 4), value, dtype=torch.uint8)


async def _run_many(batcher: DynamicBatcher, values: list[int], thresholds: list[float]) -> list[dict[str, Any]]:
    async def one(v: int, t: float) -> dict[str, Any]:
        with batcher.slot():
            await asyncio.sleep(0)
            return await batcher.submit(image(v), t)

    batcher.start()
    try:
        return await asyncio.gather(*(one(v, t) for v, t in zip(values, thresholds)))
    finally:
        await batcher.stop()


def test_concurrent_requests_share_batches_and_keep_their_thresholds() -> None:
    fake = FakeDetect(delay=0.02)
    batcher = DynamicBatcher(fake, max_batch=4, max_wait_s=0.05, max_queue=16)
    values = [2, 4, 6, 8, 3, 5, 7, 9, 1, 2]
    thresholds = [0.0, 0.3, 0.0, 0.3, 0.0, 0.3, 0.0, 0.3, 0.0, 0.3]
    results = asyncio.run(_run_many(batcher, values, thresholds))
    assert sum(n for n, _ in fake.calls) == 10 and max(n for n, _ in fake.calls) == 4
    assert all(t == 0.0 for _, t in fake.calls)  # each batch at its lowest threshold
    for v, t, res in zip(values, thresholds, results):  # ... then each answer at its own
        expected = [s for s in (v / 10, v / 20) if s >= t]
        assert res["scores"].tolist() == pytest.approx(expected)
        assert res["names"] == ["a", "b"][: len(expected)]


def test_without_mixed_thresholds_each_forward_pass_runs_one_threshold() -> None:
    """With box fusion (--tta-merge wbf, --tile-merge wbf), boxes below a request's
    threshold change the ones above it: a request at 0.6 got 14 boxes batched with one at 0.05
    and 8 alone (Lite0, TTA + WBF). Such a batch now runs as one pass per threshold."""
    fake = FakeDetect(delay=0.02)
    passes: list[tuple[float, set[int]]] = []

    def detect(images: list[torch.Tensor], threshold: float) -> list[dict[str, Any]]:
        passes.append((threshold, {int(im[0, 0, 0]) for im in images}))
        return fake(images, threshold)

    batcher = DynamicBatcher(detect, max_batch=4, max_wait_s=0.05, max_queue=16, mixed_thresholds=False)
    values = [2, 4, 6, 8, 3, 5, 7, 9]
    thresholds = [0.0, 0.3] * 4
    results = asyncio.run(_run_many(batcher, values, thresholds))
    at = {0.0: {2, 6, 3, 7}, 0.3: {4, 8, 5, 9}}  # the images sent at each threshold
    assert sum(len(images) for _, images in passes) == 8
    assert all(images <= at[t] for t, images in passes), passes  # each pass: one threshold's images
    assert max(len(images) for _, images in passes) > 1  # still batched
    for v, t, res in zip(values, thresholds, results):
        assert res["scores"].tolist() == pytest.approx([s for s in (v / 10, v / 20) if s >= t])


def test_a_lone_request_does_not_wait() -> None:
    fake = FakeDetect()
    batcher = DynamicBatcher(fake, max_batch=8, max_wait_s=5.0, max_queue=4)

    async def main() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await _run_many(batcher, [5], [0.0])
        return loop.time() - start

    assert asyncio.run(main()) < 1.0  # not the 5 s max_wait: nobody else was coming
    assert fake.calls == [(1, 0.0)]


def test_admission_is_bounded_and_released() -> None:
    batcher = DynamicBatcher(FakeDetect(), max_batch=2, max_wait_s=0.0, max_queue=2)
    with batcher.slot(), batcher.slot():
        assert batcher.admitted == 2
        with pytest.raises(QueueFull, match="--max-queue 2"), batcher.slot():
            pass
    assert batcher.admitted == 0
    with pytest.raises(ValueError, match=r"^max_batch and max_queue must be >= 1 and max_wait_s >= 0$"):
        DynamicBatcher(FakeDetect(), max_batch=0)
    with pytest.raises(ValueError, match="max_wait_s >= 0"):  # nan was accepted and waited without bound
        DynamicBatcher(FakeDetect(), max_wait_s=float("nan"))


def test_a_failing_batch_fails_its_requests_only() -> None:
    calls = []

    def detect(images: list[torch.Tensor], threshold: float) -> list[dict[str, Any]]:
        calls.append(len(images))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return FakeDetect()(images, threshold)

    batcher = DynamicBatcher(detect, max_batch=1, max_wait_s=0.0, max_queue=4)

    async def main() -> list[Any]:
        batcher.start()
        try:
            first = await asyncio.gather(batcher.submit(image(1), 0.0), return_exceptions=True)
            second = await batcher.submit(image(4), 0.0)
            return [first[0], second]
        finally:
            await batcher.stop()

    failed, ok = asyncio.run(main())
    assert isinstance(failed, RuntimeError) and str(failed) == "boom"
    assert ok["scores"].tolist() == pytest.approx([0.4, 0.2])


def test_filter_detections() -> None:
    det = {"boxes": torch.arange(12.0).reshape(3, 4), "scores": torch.tensor([0.9, 0.2, 0.5]),
           "labels": torch.tensor([0, 1, 2]), "names": ["x", "y", "z"]}  # fmt: skip
    out = filter_detections(det, 0.5)
    assert out["scores"].tolist() == pytest.approx([0.9, 0.5]) and out["names"] == ["x", "z"]
    assert out["boxes"].tolist() == [[0, 1, 2, 3], [8, 9, 10, 11]] and out["labels"].tolist() == [0, 2]
