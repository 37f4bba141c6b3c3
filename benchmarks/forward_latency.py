"""Network-only CPU latency: this package vs the reference implementation (effdet), same weights.

Both models are built for the same variant; effdet's random weights are converted into ours, so
both compute the same function. Runs interleaved in one process, reports medians and the ratio.

    python benchmarks/forward_latency.py --model efficientdet_d0 --batch 1 --repeats 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="efficientdet_d0")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from effdet.config import get_efficientdet_config
    from effdet.efficientdet import EfficientDet as RefEfficientDet

    from efficientdet import create_model

    ref = RefEfficientDet(get_efficientdet_config("tf_" + args.model), pretrained_backbone=False).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ref.pth")
        torch.save(ref.state_dict(), path)
        ours = create_model(args.model, weights=path).eval()
    from efficientdet.export import optimize_for_inference

    fast = optimize_for_inference(ours)  # BN folded into convs, channels_last
    size = ours.config.image_size
    x = torch.randn(args.batch, 3, *size)
    models = {"effdet": ref, "efficientdet": ours, "ours fused+cl": fast}
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for model in models.values():  # warm-up
            model(x)
        for _ in range(args.repeats):
            for key, model in models.items():
                t = time.perf_counter()
                model(x)
                times[key].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.model} {size[0]}x{size[1]} batch {args.batch}, {args.threads} threads, {args.repeats} runs")
    for key, value in med.items():
        print(f"  {key:<13} {value * 1000:8.1f} ms/batch  {args.batch / value:6.2f} images/s")
    for key in ("efficientdet", "ours fused+cl"):
        print(f"  speed ratio effdet / {key}: {med['effdet'] / med[key]:.2f}x")


if __name__ == "__main__":
    main()
