"""``efficientdet benchmark MODEL``: latency, throughput, memory and FLOP rates per backend.

Network only (preprocessed tensors -> head outputs) and end-to-end (JPEG files -> detections:
decode, preprocess, network, postprocess) at each batch size, for each backend; with
``--compare-effdet`` the reference implementation runs the same architecture with the same
weights on the same images and every row shows ours / effdet images per second.

    efficientdet benchmark efficientdet_d0 --image-size 512 --batch-sizes 1,4 \\
        --backends torch,onnxruntime --compare-effdet
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _check_outputs_and_options(args: argparse.Namespace) -> None:
    """Options that were accepted and then ignored or failed only after the whole run: a
    ``--json`` folder (an IsADirectoryError traceback, results lost), a score threshold outside
    0..1, ``--calibration`` without an int8 backend, an unknown ``--device``."""
    from ..benchmark import INT8_BACKENDS
    from .common import check_image_size, check_score_threshold, resolve_device

    if args.image_size is not None:  # was "image size 100x100: ..." (no flag named)
        check_image_size(args.image_size)
    if args.json is not None and Path(args.json).is_dir():
        raise ValueError(f"--json {args.json}: is a folder; give the JSON file to write")
    if args.score_threshold is not None:
        check_score_threshold(args.score_threshold)
    if args.calibration is not None and not set(INT8_BACKENDS) & set(args.backends):
        raise ValueError(
            f"--calibration is for the int8 backends ({', '.join(INT8_BACKENDS)}), and --backends "
            f"{','.join(args.backends)} has none"
        )
    resolve_device(args.device)


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..benchmark import BACKENDS

    p = sub.add_parser(
        "benchmark",
        help="latency, throughput, memory and GFLOP/s per backend (optionally against effdet)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="a model name (see `efficientdet list`)")
    p.add_argument("--weights", default=None, help="checkpoint, registered name or URL (default: random weights)")
    p.add_argument("--image-size", type=int, default=None, help="model input side, a multiple of 32 (default: the model's)")
    p.add_argument("--batch-sizes", type=_int_list, default=[1, 8], help="comma-separated batch sizes (default 1,8)")
    p.add_argument(
        "--backends", type=_names, default=["torch", "onnxruntime"],
        help=f"comma-separated, from: {', '.join(BACKENDS)} (default torch,onnxruntime)",
    )  # fmt: skip
    p.add_argument("--iterations", type=int, default=20, help="timed runs per measurement (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs before each measurement (default 3)")
    p.add_argument(
        "--rounds", type=int, default=1,
        help="repeat all measurements N times, backends in rotating order, and report medians over all "
        "rounds: fairer ratios on a machine whose speed drifts (default 1)",
    )  # fmt: skip
    p.add_argument(
        "--malloc", choices=["steady", "default"], default="steady",
        help="steady (default): glibc keeps freed memory, so no backend's time depends on page faults; "
        "default: glibc's own policy (timings then vary with the heap's layout, see faults/img)",
    )  # fmt: skip
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the physical cores)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--compile", action="store_true", help="torch backend: torch.compile the model")
    p.add_argument(
        "--onnx-exporter", choices=["dynamo", "torchscript"], default="dynamo",
        help="torch.onnx exporter for the onnxruntime backends (default dynamo; torchscript exports faster)",
    )  # fmt: skip
    p.add_argument(
        "--score-threshold", type=float, default=None,
        help="our backends: drop scores below this before NMS (default the model's 0.001, COCO evaluation; "
        "`efficientdet predict` uses 0.3)",
    )  # fmt: skip
    p.add_argument("--compare-effdet", action="store_true", help="also run the reference (effdet) on the same weights")
    p.add_argument("--images", default=None, help="folder of images for end-to-end runs (default: synthetic JPEGs)")
    p.add_argument(
        "--calibration", default=None, metavar="DATA",
        help="int8 backends: calibration dataset or image folder (default: the benchmark's images)",
    )  # fmt: skip
    p.add_argument("--json", default=None, metavar="OUT", help="also write the results as JSON to OUT")
    p.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    p.set_defaults(run=run)


# The backends that export the model as a float ONNX graph with --onnx-exporter.
FLOAT_GRAPH_BACKENDS = ("onnxruntime", "onnxruntime-nms", "openvino")


def run(args: argparse.Namespace) -> int:
    from ..benchmark import check_backends, render_table, run_benchmark
    from ..fs import atomic_write

    if args.iterations < 1 or args.warmup < 0 or args.rounds < 1:
        raise ValueError(
            f"--iterations and --rounds must be >= 1 and --warmup >= 0, got {args.iterations}, {args.rounds} "
            f"and {args.warmup}"
        )
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if not args.backends:
        raise ValueError("--backends: name at least one backend")
    check_backends(args.backends, args.compare_effdet)  # fail before building anything
    exported = [b for b in args.backends if b in FLOAT_GRAPH_BACKENDS]
    if exported:  # without onnxscript the export failed after the torch rows, naming no extra
        from ..export.cache import require_onnx_export

        require_onnx_export(args.onnx_exporter == "dynamo", f"--backends {exported[0]} (--onnx-exporter {args.onnx_exporter})")
    _check_outputs_and_options(args)
    log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    result = run_benchmark(
        args.model,
        weights=args.weights,
        image_size=args.image_size,
        batch_sizes=args.batch_sizes,
        backends=args.backends,
        iterations=args.iterations,
        warmup=args.warmup,
        threads=args.threads,
        device=args.device,
        compare_effdet=args.compare_effdet,
        images=args.images,
        compile=args.compile,
        onnx_exporter=args.onnx_exporter,
        score_threshold=args.score_threshold,
        log=log,
        rounds=args.rounds,
        steady_heap=args.malloc == "steady",
        calibration=args.calibration,
    )
    print(render_table(result))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, json.dumps(result.to_dict(), indent=2) + "\n")
        print(f"\nwrote {out}")
    return 0
