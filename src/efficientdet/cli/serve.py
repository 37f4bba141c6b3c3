"""``efficientdet serve``: an HTTP detection service with dynamic batching and a web page.

    efficientdet serve --weights runs/mine/best.safetensors            # http://127.0.0.1:8000/
    curl -F image=@photo.jpg http://127.0.0.1:8000/v1/detect
    curl --data-binary @photo.jpg 'http://127.0.0.1:8000/v1/detect?score_threshold=0.5&classes=cat'

Concurrent requests are decoded on threads and run through one forward pass of up to
--max-batch images, waiting at most --max-wait-ms to fill it. At most --max-queue requests
are in progress; more get 503 with Retry-After. SIGTERM/SIGINT finish the requests in flight
and exit 0. API: POST /v1/detect, GET /v1/model, GET /healthz, GET /metrics (Prometheus).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
from typing import Any

from .common import (
    add_model_args,
    check_image_size,
    check_max_input_pixels,
    check_score_threshold,
    check_tile_args,
    resolve_device,
)

__all__ = ["add_parser", "run_serve"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="serve a detector over HTTP (JSON API, web page, Prometheus metrics)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    # --batch-size would be ignored: each batch is as large as the requests waiting (--max-batch).
    cache = "<cache>/serve/onnx-cache; <cache>: $EFFICIENTDET_CACHE, else $XDG_CACHE_HOME/efficientdet, else ~/.cache/efficientdet"
    add_model_args(p, cache_default=cache, batch_size=False)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--max-batch", type=int, default=8, help="images per forward pass, at most (8)")
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="longest wait to fill a batch, ms (10)")
    p.add_argument("--max-queue", type=int, default=64, help="requests in progress at most; more get 503 (64)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted upload, MB (20)")
    p.add_argument("--score-threshold", type=float, default=0.3, help="default score threshold of /v1/detect (0.3)")
    p.add_argument("--decode-workers", type=int, default=2, help="threads decoding uploads (2)")
    p.add_argument(
        "--malloc", choices=("steady", "default"), default="steady",
        help="steady (default): glibc keeps freed memory in one arena, so batches reuse pages without "
        "page faults (resident size stays near its peak); default: glibc's own policy",
    )  # fmt: skip
    p.add_argument("--graceful-timeout", type=float, default=60.0, help="seconds to finish requests on shutdown (60)")
    p.set_defaults(run=run_serve)


def _check(args: argparse.Namespace) -> None:
    if args.max_batch < 1 or args.max_queue < 1 or args.decode_workers < 1:
        raise ValueError("--max-batch, --max-queue and --decode-workers must be at least 1")
    if not args.max_wait_ms >= 0:  # nan passed `< 0` and then meant an unbounded wait
        raise ValueError(f"--max-wait-ms {args.max_wait_ms}: must be a number >= 0 (milliseconds)")
    if not 0 < args.max_upload_mb < math.inf:  # nan and inf failed later, converting to bytes
        raise ValueError(f"--max-upload-mb {args.max_upload_mb}: must be a positive, finite number of MB")
    check_score_threshold(args.score_threshold)
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port {args.port}: must be in 0..65535")
    if not args.graceful_timeout >= 0:  # a negative one cut the requests in flight at once
        raise ValueError(f"--graceful-timeout {args.graceful_timeout}: must be >= 0 (seconds)")
    # the model's flags too, as predict and eval check them: at load time the server has started
    check_tile_args(args)
    if args.device is not None:
        resolve_device(args.device)
    if args.image_size is not None:
        check_image_size(args.image_size)
    if args.max_input_pixels is not None:
        check_max_input_pixels(args.max_input_pixels)


# The `serve` extra's packages, by import name (python-multipart is `python_multipart`, or
# `multipart` before 0.0.13: Starlette takes either).
SERVE_PACKAGES = {"fastapi": ("fastapi",), "uvicorn": ("uvicorn",),
                  "python-multipart": ("python_multipart", "multipart"), "prometheus-client": ("prometheus_client",)}  # fmt: skip


def require_serve_packages() -> None:
    """One line naming the extra when a package of it is missing: without FastAPI, uvicorn or
    prometheus-client ``serve`` was an import traceback; without python-multipart it started and
    answered every form upload (the documented ``curl -F``, the web page) with 400 "bad_multipart"."""
    missing = [pip for pip, names in SERVE_PACKAGES.items() if not any(importlib.util.find_spec(n) for n in names)]
    if missing:
        raise RuntimeError(f"serve needs {', '.join(missing)}, not installed here: pip install 'efficientdet[serve]'")


def _loader(args: argparse.Namespace) -> Any:
    """A function loading the model for ``args.backend`` as a ServedModel (run at startup)."""
    from ..serve.app import ServedModel
    from ..weights.registry import weights_cache_dir
    from .common import build_runner

    def load() -> ServedModel:
        args.batch_size = args.max_batch  # the detector runs each batch in one pass
        # serve has no output folder: graphs exported for --backend onnxruntime/openvino go to
        # <cache>/serve/onnx-cache unless --onnx-cache says otherwise (the cache weights and
        # OpenVINO use: it was ~/.cache whatever $EFFICIENTDET_CACHE said)
        runner = build_runner(args, weights_cache_dir() / "serve")
        detector, config = runner.detector, runner.config

        def detect(images: list[Any], threshold: float) -> list[dict[str, Any]]:
            return detector(images, score_threshold=threshold, batch_size=len(images))

        h, w = config.image_size
        print(f"serve: {config.name} ({h}x{w}, {runner.backend}) loaded", file=sys.stderr, flush=True)
        # box fusion lets boxes under a request's threshold move those above it (NMS, hard or soft, does not)
        fused = (args.tta and args.tta_merge == "wbf") or (args.tile and args.tile_merge == "wbf")
        return ServedModel(detect, config.name, (h, w), config.num_classes, runner.class_names, runner.backend,
                           runner.max_input_pixels, detector.decode_size, runner.min_score_threshold,
                           args.tile or 0, not fused)  # fmt: skip

    return load


def run_serve(args: argparse.Namespace) -> int:
    _check(args)
    require_serve_packages()
    from ..serve.app import ServeLimits, create_app
    from ..serve.server import check_can_listen, make_server

    check_can_listen(args.host, args.port)

    limits = ServeLimits(
        max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), score_threshold=args.score_threshold,
        decode_workers=args.decode_workers,
    )  # fmt: skip
    if args.malloc == "steady":
        from ..benchmark.heap import one_arena, steady_heap

        # A server's batches allocate the same large blocks again and again; the network runs
        # on a worker thread, so it must share the main arena to get them without page faults.
        steady_heap()
        one_arena()
    failed: list[BaseException] = []

    def on_load_error(exc: BaseException) -> None:
        print(f"efficientdet serve: error: cannot load the model: {exc}", file=sys.stderr, flush=True)
        failed.append(exc)
        server.should_exit = True

    app = create_app(_loader(args), limits, on_load_error)
    server = make_server(app, args.host, args.port, args.graceful_timeout)
    server.run()
    return 2 if failed else 0
