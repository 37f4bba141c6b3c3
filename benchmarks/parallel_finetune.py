"""Screen training candidates on raccoon: many `finetune_raccoon.py` runs at once, each a fixed
number of steps instead of a time budget, so a GPU machine with many cores can run several seeds
of several candidates in the minutes one 20-minute CPU run takes.

    python benchmarks/parallel_finetune.py --data ../shared/datasets/raccoon --steps 920 \
        --seeds 0,1,2,3 --concurrency 16 --start-deadline 300 --out runs/screen \
        --candidate base= --candidate gridmask=augment.grid_mask=true \
        --candidate 'mix=augment.mixup=0.1;augment.grid_mask=true'

A candidate is NAME=KEY=VALUE[;KEY=VALUE...] (training config overrides on top of the
`finetune` preset, as `finetune_raccoon.py --set`). Runs start seed-major (seed 0 of every
candidate first), so a start deadline cuts whole seeds, and every candidate keeps the same seeds.
The step count matches what the CPU budget reaches (~920 steps of batch 8 in 20 minutes): the LR
schedule then spans the same steps, decaying by step instead of by time. Results are a screen,
not the acceptance measurement: confirm a winner with `finetune_raccoon.py --minutes 20` on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def parse_candidate(text: str) -> tuple[str, list[str]]:
    """``name=k=v;k=v`` -> (name, ["k=v", "k=v"]); ``name=`` is the preset unchanged."""
    name, _, rest = text.partition("=")
    if not name:
        raise SystemExit(f"--candidate {text!r}: expected NAME=KEY=VALUE[;KEY=VALUE...]")
    return name, [s for s in rest.split(";") if s]


def launch(args: argparse.Namespace, name: str, sets: list[str], seed: int) -> tuple[subprocess.Popen, Path]:
    out = Path(args.out) / f"{name}_s{seed}"
    out.mkdir(parents=True, exist_ok=True)
    fixed = [f"epochs={args.steps // 20}", "time_budget_minutes=null", f"amp={args.amp}"]
    cmd = [sys.executable, str(Path(__file__).with_name("finetune_raccoon.py")), "--data", args.data,
           "--seed", str(seed), "--out", str(out)]
    for s in fixed + sets:
        cmd += ["--set", s]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1")
    log = open(out / "log.txt", "w")  # noqa: SIM115 - the child writes to it for its whole life; the OS closes it
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), out


def summarize(results: list[dict]) -> str:
    """One line per candidate: mean AP over its finished seeds, and each seed's AP."""
    lines = ["candidate | seeds | mean AP | mean AP50 | APs by seed"]
    by_name: dict[str, list[dict]] = {}
    for r in results:
        by_name.setdefault(r["candidate"], []).append(r)
    for name, rows in by_name.items():
        rows.sort(key=lambda r: r["seed"])
        ok = [r for r in rows if "AP" in r]
        mean = sum(r["AP"] for r in ok) / max(1, len(ok))
        mean50 = sum(r["AP50"] for r in ok) / max(1, len(ok))
        aps = " ".join(f"s{r['seed']}:{r.get('AP', 'fail')}" for r in rows)
        lines.append(f"{name} | {len(ok)} | {mean:.4f} | {mean50:.4f} | {aps}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/datasets/raccoon")
    parser.add_argument("--steps", type=int, default=920, help="optimiser steps per run (20 per epoch)")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--candidate", action="append", required=True, metavar="NAME=K=V[;K=V]")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="OMP threads per run")
    parser.add_argument("--amp", default="off", help="training precision (off matches the CPU runs)")
    parser.add_argument("--start-deadline", type=float, default=1e9, help="seconds after which no run starts")
    parser.add_argument("--out", default="runs/screen")
    args = parser.parse_args()

    seeds = [int(s) for s in args.seeds.split(",")]
    candidates = [parse_candidate(c) for c in args.candidate]
    queue = [(name, sets, seed) for seed in seeds for name, sets in candidates]
    running: list[tuple[subprocess.Popen, Path, str, int]] = []
    results: list[dict] = []
    t0 = time.time()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    while queue or running:
        while queue and len(running) < args.concurrency and time.time() - t0 < args.start_deadline:
            name, sets, seed = queue.pop(0)
            proc, out = launch(args, name, sets, seed)
            running.append((proc, out, name, seed))
        if queue and time.time() - t0 >= args.start_deadline:
            print(f"start deadline: {len(queue)} runs not started", flush=True)
            queue.clear()
        for item in list(running):
            proc, out, name, seed = item
            if proc.poll() is None:
                continue
            running.remove(item)
            row = {"candidate": name, "seed": seed, "rc": proc.returncode}
            summary = out / "summary.json"
            if summary.exists():
                row.update(json.loads(summary.read_text()))
            results.append(row)
            print(f"{time.time() - t0:6.0f}s {name} s{seed}: AP {row.get('AP')} steps {row.get('steps')}", flush=True)
            (Path(args.out) / "results.json").write_text(json.dumps(results, indent=1))
        time.sleep(1.0)
    print(summarize(results))


if __name__ == "__main__":
    main()
