"""``efficientdet export``: ONNX (optionally with NMS inside), TorchScript or a torch.export program."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import check_image_size, check_out_file, check_score_threshold


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..export import EXPORT_FORMATS

    p = sub.add_parser("export", help="export a model for deployment (ONNX, TorchScript, torch.export)", description=__doc__)
    p.add_argument("--weights", required=True, help="checkpoint, registered weights name or URL")
    p.add_argument("--model", help="model name (needed for effdet .pth files)")
    p.add_argument("--format", default="onnx", help=f"one of: {', '.join(EXPORT_FORMATS)} (default onnx)")
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--nms", action="store_true", help="ONNX: include decoding and NonMaxSuppression")
    p.add_argument("--image-size", type=int, help="input size (multiple of 32; default: the model's)")
    p.add_argument("--batch-size", type=int, default=1, help="example batch size for tracing; with --static-batch, the graph's fixed batch (default 1)")
    p.add_argument("--static-batch", action="store_true", help="fix the batch size to --batch-size (ONNX, exported-program; default: dynamic)")
    p.add_argument("--score-threshold", type=float, help="ONNX with --nms: score threshold in the graph")
    p.add_argument("--max-detections", type=int, help="ONNX with --nms: detections per image")
    p.add_argument(
        "--onnx-exporter", choices=["dynamo", "torchscript"],
        help="torch.onnx exporter for a float ONNX graph: dynamo (default) or torchscript (the older one, "
             "~5x faster to export; --int8 always uses it)",
    )  # fmt: skip
    q = p.add_argument_group("int8 (post-training static quantization, QDQ ONNX)")
    q.add_argument("--int8", action="store_true", help="quantize the network to int8 (needs --calibration)")
    q.add_argument(
        "--quantizer", choices=["nncf", "onnxruntime"], default="nncf",
        help="nncf (default; run the file with --backend openvino, the faster pair here) or onnxruntime "
             "(for --backend onnxruntime)",
    )  # fmt: skip
    q.add_argument("--calibration", metavar="DATA", help="a dataset (COCO, VOC, YOLO) or a folder of images like the ones to run on")
    q.add_argument("--calibration-images", type=int, default=100, metavar="N", help="images to calibrate on (default 100)")
    q.add_argument(
        "--calibration-method", choices=["auto", "minmax", "quantile", "percentile", "entropy"], default="auto",
        help="how activation ranges are taken: nncf minmax or quantile (per image, averaged), onnxruntime "
             "minmax, percentile or entropy; auto (default): nncf quantile for Swish networks (D0-D7), "
             "minmax otherwise",
    )  # fmt: skip
    q.add_argument(
        "--keep-float", default="heads", metavar="GROUPS",
        help="comma-separated parts kept in float: heads, stem, fusion, or none (default heads)",
    )  # fmt: skip
    q.add_argument(
        "--reduce-range", choices=["auto", "on", "off"], default="auto",
        help="7-bit weights for x86 CPUs without VNNI (auto: on when this CPU lacks VNNI)",
    )  # fmt: skip
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..export import EXPORT_FORMATS, export
    from ..factory import create_model

    fmt = args.format.lower()
    if fmt not in EXPORT_FORMATS and fmt != "program":
        raise ValueError(f"unknown export format {args.format!r}; valid formats: {', '.join(EXPORT_FORMATS)}")
    _check_flags(args, fmt)
    if fmt == "onnx":  # before the model loads: a missing package was an import traceback after it
        from ..export.cache import require_onnx_export

        require_onnx_export(dynamo=not args.int8 and args.onnx_exporter != "torchscript")
    if args.int8 or args.calibration:
        return _run_int8(args, fmt)
    model = create_model(args.model, weights=args.weights).eval()
    kwargs: dict = {"image_size": args.image_size, "batch_size": args.batch_size}
    if fmt == "onnx":
        kwargs.update(
            dynamic_batch=not args.static_batch,
            include_postprocess=args.nms,
            score_threshold=args.score_threshold,
            max_detections=args.max_detections,
            dynamo=args.onnx_exporter != "torchscript",
        )
    elif fmt != "torchscript":
        kwargs["dynamic_batch"] = not args.static_batch
    path = export(model, Path(args.out), fmt, **kwargs)
    size = path.stat().st_size / 1e6
    assert model.config is not None  # create_model sets it
    print(f"exported {model.config.name} ({fmt}) -> {path} ({size:.1f} MB); checked and run once")
    return 0


def _check_flags(args: argparse.Namespace, fmt: str) -> None:
    """Usage errors, before any work. Flags that would be ignored in this combination are errors
    (they used to be dropped silently: ``--format torchscript --nms`` wrote a model without NMS),
    and so is an --out that is a folder (a traceback once the export was done) or whose name the
    program would read as another kind of file."""
    if Path(args.out).is_dir():
        suffix = {"onnx": ".onnx", "torchscript": ".pt"}.get(fmt, ".pt2")
        raise ValueError(f"--out {args.out}: is a folder; give the file to write, e.g. {Path(args.out) / ('model' + suffix)}")
    if fmt != "onnx":
        given = [flag for flag, value in (("--nms", args.nms), ("--score-threshold", args.score_threshold),
                                          ("--max-detections", args.max_detections)) if value]  # fmt: skip
        if given:
            raise ValueError(f"{given[0]} is for --format onnx only; --format {args.format} has no post-processing inside")
    elif not args.nms and (args.score_threshold is not None or args.max_detections is not None):
        flag = "--score-threshold" if args.score_threshold is not None else "--max-detections"
        raise ValueError(f"{flag} sets the graph's own post-processing: it needs --nms (without it, pass the "
                         "threshold to predict, eval or serve)")  # fmt: skip
    _check_export_options(args, fmt)
    if args.score_threshold is not None:
        check_score_threshold(args.score_threshold)
    if args.max_detections is not None and args.max_detections < 1:
        raise ValueError(f"--max-detections {args.max_detections}: must be at least 1")
    if args.batch_size < 1:  # else named "batch_size" by the export, after loading (and calibrating)
        raise ValueError(f"--batch-size {args.batch_size}: must be at least 1")
    if not args.int8:
        defaults = (("--quantizer", "nncf"), ("--calibration-method", "auto"), ("--keep-float", "heads"),
                    ("--reduce-range", "auto"), ("--calibration-images", 100))  # fmt: skip
        for flag, default in defaults:
            if getattr(args, flag[2:].replace("-", "_")) != default:
                raise ValueError(f"{flag} is an int8 option: add --int8 --calibration DATA (without --int8 the "
                                 "export is float)")  # fmt: skip
    elif fmt != "onnx":  # before the --out name check: the format is the mistake here
        raise ValueError(f"--int8 needs --format onnx (int8 runs in OpenVINO or ONNX Runtime); --format {args.format} has no int8 form")
    if args.image_size is not None:
        check_image_size(args.image_size)  # else named by the model code, after loading (and calibrating)
    from ..export import check_output_path

    try:
        check_output_path(args.out, fmt)
    except ValueError as exc:
        raise ValueError(f"--out {exc}") from None
    check_out_file(args.out)


def _check_export_options(args: argparse.Namespace, fmt: str) -> None:
    """``--onnx-exporter`` off float ONNX and ``--static-batch`` for TorchScript changed nothing
    (the int8 path always uses the TorchScript-based exporter, whose node names its float groups
    match; a traced TorchScript module keeps a dynamic batch)."""
    if args.onnx_exporter is not None and fmt != "onnx":
        raise ValueError(f"--onnx-exporter is for --format onnx only; --format {args.format} does not use torch.onnx")
    if args.onnx_exporter == "dynamo" and args.int8:
        raise ValueError("--onnx-exporter dynamo: --int8 always exports with the torchscript exporter; drop the flag")
    if args.static_batch and fmt == "torchscript":
        raise ValueError("--static-batch: a TorchScript module has a dynamic batch (no op depends on it); "
                         "--format onnx or exported-program can fix it")  # fmt: skip


def _run_int8(args: argparse.Namespace, fmt: str) -> int:
    """``--int8``: checked before anything is built, then calibrated, quantized and written."""
    import sys

    from ..export.calibration import calibration_files, load_calibration_images
    from ..export.quantize import Int8Options, export_int8, resolve_method
    from ..factory import create_model

    if not args.int8:
        raise ValueError("--calibration is only used with --int8")
    if not args.calibration:
        raise ValueError("--int8 needs --calibration DATA: a dataset or a folder of images like the ones to run on")
    if args.quantizer == "nncf":
        from ..export.quantize import require_nncf

        require_nncf()  # before the calibration images are read
    groups = tuple(g.strip() for g in args.keep_float.split(",") if g.strip() and g.strip() != "none")
    options = Int8Options(
        quantizer=args.quantizer,
        calibration_images=args.calibration_images,
        method=args.calibration_method,
        reduce_range=None if args.reduce_range == "auto" else args.reduce_range == "on",
        float_groups=groups,
    )
    files = calibration_files(args.calibration, options.calibration_images)
    model = create_model(args.model, weights=args.weights).eval()
    assert model.config is not None  # create_model sets it
    input_size = (args.image_size, args.image_size) if args.image_size else model.config.image_size

    def warn(message: str) -> None:
        print(f"efficientdet export: warning: {message}", file=sys.stderr)

    images = load_calibration_images(files, warn=warn, image_size=input_size)
    options = resolve_method(options, model)
    path = export_int8(
        model, Path(args.out), images, options, image_size=args.image_size, batch_size=args.batch_size,
        dynamic_batch=not args.static_batch, include_postprocess=args.nms,
        score_threshold=args.score_threshold, max_detections=args.max_detections,
    )  # fmt: skip
    size = path.stat().st_size / 1e6
    rr = "on" if options.resolved_reduce_range() else "off"
    print(
        f"exported {model.config.name} (onnx, int8 by {options.quantizer}: {len(images)} calibration images, "
        f"{options.method} ranges, "
        f"float: {', '.join(groups) or 'none'}, reduce_range {rr}, outputs: {_layout(path)}) -> {path} "
        f"({size:.1f} MB); checked and run once"
    )
    return 0


def _layout(path: Path) -> str:
    """The exported graph's output layout, from its metadata."""
    from ..export.metadata import read_onnx_metadata

    meta = read_onnx_metadata(path)
    return "detections (NMS inside)" if meta.nms_inside else "candidates" if meta.candidates else "raw"
