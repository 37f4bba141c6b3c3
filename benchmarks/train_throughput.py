"""Training throughput (images/s) and peak memory: this package vs effdet, side by side.

Each (implementation, model) pair runs in its own subprocess so peak RSS (CPU) or peak CUDA
memory is measured cleanly; the table prints ratios. Same model, image size, batch, boxes.

    python benchmarks/train_throughput.py --steps 10 --batch 4 [--repeats 3 --impls effdet,efficientdet-cl]
    python benchmarks/train_throughput.py --device cuda --batch 16 --impls effdet,efficientdet-cl

On a GPU both implementations train under bf16 autocast (the Trainer's ``amp: auto``) and
ours uses the Trainer's GPU set-up: channels_last, without the CPU-only rewrites.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
CASES = [("efficientdet_d0", 512), ("efficientdet_lite0", 320), ("efficientdet_d3", 896)]
DEFAULT_MODELS = "efficientdet_d0,efficientdet_lite0"
# "efficientdet": the Trainer's CPU set-up with channels_last=false, data_parallel_threads=1
# "efficientdet-cl": the same with channels_last (the default; 1x1 convs then run as GEMMs)
# "efficientdet-ddp2": channels_last, 2 DDP processes (gloo, torchrun) of 1 thread each sharing the
# same global batch: `torchrun --nproc-per-node=2 -m efficientdet train ...` on a 2-core CPU
# "efficientdet-threads": channels_last and the batch split over 2 single-threaded workers of one
# process (TrainConfig.data_parallel_threads="auto", the CPU default; engine/threads.py)
IMPLS = ("effdet", "efficientdet", "efficientdet-cl", "efficientdet-ddp2", "efficientdet-threads")


def _boxes(batch: int, size: int):
    import torch

    g = torch.Generator().manual_seed(0)
    boxes, labels = [], []
    for _ in range(batch):
        xy = torch.rand(5, 2, generator=g) * size * 0.6
        wh = torch.rand(5, 2, generator=g) * size * 0.3 + 16
        boxes.append(torch.cat([xy, xy + wh], 1))
        labels.append(torch.randint(0, 20, (5,), generator=g))
    return boxes, labels


def _autocast(device: str):
    import contextlib

    import torch

    return torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else contextlib.nullcontext()


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_ours(
    model_name: str,
    size: int,
    batch: int,
    steps: int,
    channels_last: bool = False,
    ddp: bool = False,
    threads: int = 1,
    device: str = "cpu",
) -> float:
    import torch

    from efficientdet import create_model
    from efficientdet.engine.losses import DetectionLoss
    from efficientdet.engine.setup import prepare_for_training
    from efficientdet.engine.threads import ThreadDataParallel
    from efficientdet.ops.anchors import anchors_for_config
    from efficientdet.ops.matcher import AnchorLabeler

    model = create_model(model_name, num_classes=20).train()
    # the Trainer's set-up (engine/setup.py): on a CPU, lean BN + SiLU, and with channels_last
    # 1x1 convs as GEMMs; on a GPU neither (bf16 autocast)
    amp_dtype = torch.bfloat16 if device.startswith("cuda") else None
    prepare_for_training(model, torch.device(device), channels_last, amp_dtype)
    labeler = AnchorLabeler(anchors_for_config(model.config.anchors, (size, size)).to(device))
    loss_fn = DetectionLoss()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(batch, 3, size, size, device=device)
    boxes, labels = _boxes(batch, size)
    boxes, labels = [b.to(device) for b in boxes], [lb.to(device) for lb in labels]
    net: torch.nn.Module = model
    if ddp:  # this rank's share of the same global batch
        import torch.distributed as dist

        rank, world = dist.get_rank(), dist.get_world_size()
        share = slice(rank * batch // world, (rank + 1) * batch // world)
        x, boxes, labels = x[share], boxes[share], labels[share]
    if channels_last:  # TrainConfig.channels_last
        x = x.contiguous(memory_format=torch.channels_last)
    if ddp:
        net = torch.nn.parallel.DistributedDataParallel(model)

    def loss_of(net: torch.nn.Module, x: torch.Tensor, boxes, labels):  # as TrainStep.loss
        cls_t, box_t, npos = labeler(list(boxes), list(labels))
        with _autocast(device):
            cls, box = net(x)
        return loss_fn([c.float() for c in cls], [b.float() for b in box], cls_t, box_t, npos)

    tdp = ThreadDataParallel(model, threads) if threads > 1 else None

    def step() -> None:
        if tdp is not None:
            tdp.forward_backward(loss_of, x, boxes, labels)
        else:
            loss_of(net, x, boxes, labels)["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    step()
    _sync(device)
    if ddp:
        torch.distributed.barrier()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    if ddp:
        torch.distributed.barrier()
    return batch * steps / (time.perf_counter() - t)


def run_effdet(model_name: str, size: int, batch: int, steps: int, device: str = "cpu") -> float:
    import torch
    from effdet import DetBenchTrain, EfficientDet
    from effdet.config import get_efficientdet_config

    cfg = get_efficientdet_config("tf_" + model_name)
    cfg.num_classes = 20
    bench = DetBenchTrain(EfficientDet(cfg, pretrained_backbone=False)).train().to(device)
    opt = torch.optim.SGD(bench.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(batch, 3, size, size, device=device)
    boxes, labels = _boxes(batch, size)
    # effdet wants padded yxyx boxes and 1-based classes
    target = {
        "bbox": torch.stack([b[:, [1, 0, 3, 2]] for b in boxes]).to(device),
        "cls": torch.stack([lb + 1 for lb in labels]).float().to(device),
    }

    def step() -> None:
        with _autocast(device):  # effdet's train.py --amp: its loss runs under autocast too
            loss = bench(x, target)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    step()
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return batch * steps / (time.perf_counter() - t)


def child(impl: str, model_name: str, size: int, batch: int, steps: int, device: str) -> None:
    if device != "cpu":
        import torch

        if impl not in ("effdet", "efficientdet", "efficientdet-cl"):
            raise SystemExit(f"{impl} is a CPU set-up; on {device} use effdet, efficientdet or efficientdet-cl")
        if impl == "effdet":
            ips = run_effdet(model_name, size, batch, steps, device)
        else:
            ips = run_ours(model_name, size, batch, steps, channels_last=impl.endswith("-cl"), device=device)
        print(json.dumps({"images_per_s": ips, "peak_mb": torch.cuda.max_memory_allocated() / 2**20}))
        return
    if impl == "effdet":
        ips = run_effdet(model_name, size, batch, steps)
    elif impl.endswith("-ddp2"):
        import torch
        import torch.distributed as dist

        dist.init_process_group("gloo")
        ips = run_ours(model_name, size, batch, steps, channels_last=True, ddp=True)
        # memory of the whole job: the ranks' peaks added up
        peak = torch.tensor([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024])
        dist.all_reduce(peak)
        if dist.get_rank() == 0:
            print(json.dumps({"images_per_s": ips, "peak_mb": float(peak)}))
        dist.destroy_process_group()
        return
    elif impl.endswith("-threads"):
        import torch

        ips = run_ours(model_name, size, batch, steps, channels_last=True, threads=torch.get_num_threads())
    else:
        ips = run_ours(model_name, size, batch, steps, channels_last=impl.endswith("-cl"))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"images_per_s": ips, "peak_mb": peak_mb}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--impls", default=",".join(IMPLS), help=f"comma-separated subset of {', '.join(IMPLS)}")
    parser.add_argument(
        "--repeats", type=int, default=1,
        help="rounds over all implementations, interleaved; the table shows each one's median "
        "(this VM's speed drifts: interleaving spreads the drift over all of them)",
    )  # fmt: skip
    choices = ", ".join(m for m, _ in CASES)
    parser.add_argument(
        "--models", default=DEFAULT_MODELS, help=f"comma-separated, from {choices} (default {DEFAULT_MODELS})"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (bf16 autocast for both implementations)")
    parser.add_argument("--child", nargs=3, metavar=("IMPL", "MODEL", "SIZE"))
    args = parser.parse_args()
    if args.child:
        impl, model_name, size = args.child
        child(impl, model_name, int(size), args.batch, args.steps, args.device)
        return
    import statistics

    import torch

    impls = [i for i in args.impls.split(",") if i]
    unknown = sorted(set(impls) - set(IMPLS))
    if unknown or "effdet" not in impls:
        parser.error(f"--impls must include effdet and name only {', '.join(IMPLS)} (got {', '.join(unknown)})")
    where = f"{args.device} ({torch.cuda.get_device_name()}, bf16 autocast)" if args.device != "cpu" else "CPU"
    print(f"{where} training, batch {args.batch}, {args.steps} timed steps, {args.repeats} interleaved round(s), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")  # fmt: skip
    mem = "GPU peak MB" if args.device != "cpu" else "peak MB"
    print(f"{'model':<24}{'impl':<22}{'images/s':>10}{mem:>12}   (each round)")
    for model_name, size in [(m, sz) for m, sz in CASES if m in args.models.split(",")]:
        runs: dict[str, list[dict[str, float]]] = {impl: [] for impl in impls}
        for _ in range(args.repeats):
            for impl in impls:
                cmd = [sys.executable, __file__, "--child", impl, model_name, str(size),
                       "--steps", str(args.steps), "--batch", str(args.batch), "--device", args.device]  # fmt: skip
                if impl.endswith("-ddp2"):
                    # torchrun gives each worker OMP_NUM_THREADS=1: one core per process
                    cmd[1:1] = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                runs[impl].append(json.loads(out.strip().splitlines()[-1]))
        res = {
            impl: {key: statistics.median(r[key] for r in rs) for key in ("images_per_s", "peak_mb")}
            for impl, rs in runs.items()
        }
        for impl in impls:
            each = " ".join(f"{r['images_per_s']:.2f}" for r in runs[impl])
            print(f"{model_name + '@' + str(size):<24}{impl:<22}{res[impl]['images_per_s']:>10.2f}"
                  f"{res[impl]['peak_mb']:>12.0f}   ({each})")  # fmt: skip
        for impl in impls:
            if impl == "effdet":
                continue
            speed = res[impl]["images_per_s"] / res["effdet"]["images_per_s"]
            mem_ratio = res[impl]["peak_mb"] / res["effdet"]["peak_mb"]
            print(f"{'':<24}{impl + ' / effdet':<22}{speed:>9.2f}x{mem_ratio:>11.2f}x")


if __name__ == "__main__":
    main()
