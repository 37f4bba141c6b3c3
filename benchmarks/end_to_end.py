"""End-to-end inference benchmark for the README: this package (torch, ONNX Runtime) vs effdet.

A thin wrapper over ``efficientdet benchmark`` with the README's settings; any extra argument
is passed on (``--threads 2``, ``--iterations 50``, ``--images DIR``, ``--json out.json``)::

    python benchmarks/end_to_end.py
    # = efficientdet benchmark efficientdet_d0 --image-size 512 --batch-sizes 1,4 \\
    #       --backends torch,onnxruntime --compare-effdet

Run it on an otherwise idle machine: every backend runs in turn in one process, so load from
other work skews the ratios. Definitions of every column are printed under the table.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

README_ARGS = [
    "benchmark", "efficientdet_d0", "--image-size", "512", "--batch-sizes", "1,4",
    "--backends", "torch,onnxruntime", "--compare-effdet",
]  # fmt: skip


def main() -> int:
    from efficientdet.cli import main as cli

    return cli(README_ARGS + sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
