"""``efficientdet benchmark MODEL``: latency, throughput, memory and FLOP rates per backend.

Network only (preprocessed tensors -> head outputs) and end-to-end (image files -> detections:
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
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..benchmark import BenchmarkResult


# The backends that export the model as a float ONNX graph with --onnx-exporter (int8 ones: torchscript).
FLOAT_GRAPH_BACKENDS = ("onnxruntime", "onnxruntime-nms", "openvino")


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
    ``--json`` folder or a path under a file (tracebacks, results lost), a score threshold outside
    0..1, ``--calibration`` without an int8 backend, an unknown ``--device``, an ``.onnx`` as
    ``--weights``."""
    from ..benchmark import INT8_BACKENDS
    from ..export.metadata import is_graph_file
    from .common import check_image_size, check_out_file, check_score_threshold, resolve_device

    if args.image_size is not None:  # was "image size 100x100: ..." (no flag named)
        check_image_size(args.image_size)
    if args.json is not None and Path(args.json).is_dir():
        raise ValueError(f"--json {args.json}: is a folder; give the JSON file to write")
    if args.json is not None:  # under a file: a FileExistsError traceback after the whole run
        check_out_file(args.json, "--json")
    if args.score_threshold is not None:
        check_score_threshold(args.score_threshold)
    if args.calibration is not None and not set(INT8_BACKENDS) & set(args.backends):
        raise ValueError(
            f"--calibration is for the int8 backends ({', '.join(INT8_BACKENDS)}), and --backends "
            f"{','.join(args.backends)} has none"
        )
    resolve_device(args.device)
    _check_backend_options(args)
    if args.weights is not None and is_graph_file(args.weights):
        # create_model's message sent the user to "--backend onnxruntime", which they had given.
        raise ValueError(
            f"--weights {args.weights}: an exported graph; the benchmark takes the weights (.safetensors, a "
            "registered name or an effdet .pth) and exports its own graph for each onnxruntime/openvino "
            "backend: pass the weights the graph was exported from"
        )


def _check_backend_options(args: argparse.Namespace) -> None:
    """``--compile`` without the torch backend and ``--onnx-exporter`` without a backend that
    exports with it were accepted and ignored."""
    if args.compile and "torch" not in args.backends:
        raise ValueError(f"--compile is for the torch backend, and --backends {','.join(args.backends)} has none")
    if args.onnx_exporter is not None and not set(FLOAT_GRAPH_BACKENDS) & set(args.backends):
        raise ValueError(
            f"--onnx-exporter is for the backends that export a float graph ({', '.join(FLOAT_GRAPH_BACKENDS)}; the int8 "
            f"ones use torchscript), and --backends {','.join(args.backends)} has none"
        )


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
        "--onnx-exporter", choices=["dynamo", "torchscript"], default=None,
        help="torch.onnx exporter of the float graphs (default torchscript, as predict/eval/serve --backend "
        "onnxruntime export theirs; dynamo: the torch.export-based one, export's default)",
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
        help="int8 backends: calibration dataset or image folder, up to 100 images evenly spaced, as export "
        "--int8 takes (default: the benchmark's images)",
    )  # fmt: skip
    p.add_argument("--json", default=None, metavar="OUT", help="also write the results as JSON to OUT")
    p.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..benchmark import BenchmarkInterrupted, check_backends
    from .notices import print_data_warnings

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
    if exported and args.onnx_exporter == "dynamo":  # without onnxscript the export failed after the torch rows
        from ..export.cache import require_onnx_export

        require_onnx_export(True, f"--backends {exported[0]} (--onnx-exporter dynamo)")
    _check_outputs_and_options(args)
    log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    try:
        with print_data_warnings("benchmark"):  # e.g. calibration images skipped
            result = _run(args, log)
    except BenchmarkInterrupted as stop:  # Ctrl-C lost every row measured (minutes of D0 rounds)
        _report(stop.result, args.json)
        print(f"efficientdet benchmark: interrupted; the {len(stop.result.rows)} rows measured so far are above",
              file=sys.stderr)  # fmt: skip
        return 130
    _report(result, args.json)
    return 0


def _report(result: BenchmarkResult, json_out: str | None) -> None:
    """The table on stdout and, with ``--json``, the JSON document."""
    from ..benchmark import render_table
    from ..fs import atomic_write

    print(render_table(result))
    if json_out:
        out = Path(json_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, json.dumps(result.to_dict(), indent=2) + "\n")
        print(f"\nwrote {out}")


def _run(args: argparse.Namespace, log: Callable[[str], None] | None) -> BenchmarkResult:
    from ..benchmark import run_benchmark

    return run_benchmark(
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
        onnx_exporter=args.onnx_exporter or "torchscript",
        score_threshold=args.score_threshold,
        log=log,
        rounds=args.rounds,
        steady_heap=args.malloc == "steady",
        calibration=args.calibration,
    )
