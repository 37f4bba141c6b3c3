"""Peak memory and step time of a training step with and without activation checkpointing.

Each mode runs in a fresh subprocess (peak RSS, ``resource.getrusage().ru_maxrss``, is per
process and never goes down; tracemalloc does not see torch's CPU allocations). The step is
the CPU training path (``prepare_for_training``: channels-last, lean BN, 1x1 convs as GEMMs)
with the real detection loss on random boxes, SGD update included.

    python benchmarks/grad_checkpointing.py                       # D4 at 1024, batch 2 (minutes)
    python benchmarks/grad_checkpointing.py --model efficientdet_d0 --image-size 256 --steps 1  # smoke

Prints one line per mode (peak RSS, RSS before the first step, peak minus it, seconds per
step) and the ratios checkpointed / plain. Measures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def child(args: argparse.Namespace) -> dict[str, float]:
    import torch

    from efficientdet import create_model
    from efficientdet.engine.losses import DetectionLoss
    from efficientdet.engine.setup import prepare_for_training
    from efficientdet.models.checkpointing import set_grad_checkpointing
    from efficientdet.ops.anchors import anchors_for_config
    from efficientdet.ops.matcher import AnchorLabeler

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=args.num_classes, image_size=args.image_size)
    prepare_for_training(model, torch.device("cpu"), True, None)
    if args.mode == "checkpointed":
        set_grad_checkpointing(model)
    model.train()
    labeler = AnchorLabeler(anchors_for_config(model.config.anchors, model.config.image_size))
    loss_fn = DetectionLoss(num_classes=model.config.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    s = args.image_size
    images = torch.randn(args.batch_size, 3, s, s).contiguous(memory_format=torch.channels_last)
    two = torch.tensor([[0.1, 0.2, 0.5, 0.6], [0.4, 0.3, 0.9, 0.8]]) * s  # two boxes per image, xyxy pixels
    boxes = [two] * args.batch_size
    labels = [torch.tensor([0, 1])] * args.batch_size
    targets = labeler(boxes, labels)  # (class targets, box targets, positives)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times = []
    for _ in range(args.steps + 1):  # the first step warms up (allocator, oneDNN primitives)
        t0 = time.perf_counter()
        cls, box = model(images)
        loss = loss_fn(cls, box, *targets)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"peak_mb": peak, "before_mb": before, "step_s": min(times[1:]) if len(times) > 1 else times[0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="efficientdet_d4")
    p.add_argument("--image-size", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--num-classes", type=int, default=90)
    p.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--mode", choices=("plain", "checkpointed"), help=argparse.SUPPRESS)  # the child
    args = p.parse_args()
    if args.mode:
        print(json.dumps(child(args)))
        return
    results = {}
    for mode in ("plain", "checkpointed"):
        argv = [*sys.argv[1:], "--mode", mode]
        out = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, check=True).stdout
        results[mode] = json.loads(out.strip().splitlines()[-1])
        r = results[mode]
        print(f"{args.model} {args.image_size} batch {args.batch_size} {mode:>12}: peak RSS {r['peak_mb']:8.0f} MB "
              f"(before the first step {r['before_mb']:6.0f} MB, step {r['peak_mb'] - r['before_mb']:8.0f} MB), "
              f"{r['step_s']:.2f} s/step", flush=True)  # fmt: skip
    a, b = results["plain"], results["checkpointed"]
    print(f"checkpointed / plain: peak RSS {b['peak_mb'] / a['peak_mb']:.0%}, "
          f"step memory {(b['peak_mb'] - b['before_mb']) / (a['peak_mb'] - a['before_mb']):.0%}, "
          f"step time x{b['step_s'] / a['step_s']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
