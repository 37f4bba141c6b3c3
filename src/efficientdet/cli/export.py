"""``efficientdet export``: ONNX (optionally with NMS inside), TorchScript or a torch.export program."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..export import EXPORT_FORMATS

    p = sub.add_parser("export", help="export a model for deployment (ONNX, TorchScript, torch.export)")
    p.add_argument("--weights", required=True, help="checkpoint, registered weights name or URL")
    p.add_argument("--model", help="model name (needed for effdet .pth files)")
    p.add_argument("--format", default="onnx", help=f"one of: {', '.join(EXPORT_FORMATS)} (default onnx)")
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--nms", action="store_true", help="ONNX: include decoding and NonMaxSuppression")
    p.add_argument("--image-size", type=int, help="input size (multiple of 32; default: the model's)")
    p.add_argument("--batch-size", type=int, default=1, help="example batch size for tracing")
    p.add_argument("--static-batch", action="store_true", help="fix the batch size (default: dynamic)")
    p.add_argument("--score-threshold", type=float, help="ONNX with --nms: score threshold in the graph")
    p.add_argument("--max-detections", type=int, help="ONNX with --nms: detections per image")
    p.add_argument(
        "--onnx-exporter", choices=["dynamo", "torchscript"], default="dynamo",
        help="torch.onnx exporter (torchscript: the older one, ~5x faster to export)",
    )  # fmt: skip
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..export import EXPORT_FORMATS, export
    from ..factory import create_model

    fmt = args.format.lower()
    if fmt not in EXPORT_FORMATS and fmt != "program":
        raise ValueError(f"unknown export format {args.format!r}; valid formats: {', '.join(EXPORT_FORMATS)}")
    model = create_model(args.model, weights=args.weights).eval()
    kwargs: dict = {"image_size": args.image_size, "batch_size": args.batch_size}
    if fmt == "onnx":
        kwargs.update(
            dynamic_batch=not args.static_batch,
            include_postprocess=args.nms,
            score_threshold=args.score_threshold,
            max_detections=args.max_detections,
            dynamo=args.onnx_exporter == "dynamo",
        )
    elif fmt != "torchscript":
        kwargs["dynamic_batch"] = not args.static_batch
    path = export(model, Path(args.out), fmt, **kwargs)
    size = path.stat().st_size / 1e6
    print(f"exported {model.config.name} ({fmt}) -> {path} ({size:.1f} MB); checked and run once")
    return 0
