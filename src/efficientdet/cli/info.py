"""``efficientdet info MODEL`` and ``efficientdet list``: what a variant is and costs; ``info
FILE.onnx``: what an exported graph holds (model, input, classes, outputs, how it was quantized)."""

from __future__ import annotations

import argparse
import json
import os

from ..variants import get_config, list_models


def add_parser(sub: argparse._SubParsersAction) -> None:
    about = "parameters, FLOPs and the resolved config of a model, or what an exported .onnx holds"
    p = sub.add_parser("info", help=about, description=about[0].upper() + about[1:] + ".")
    p.add_argument("model", help="a model name (see `efficientdet list`) or an .onnx file from `efficientdet export`")
    p.add_argument("--image-size", type=int, nargs="+", metavar="N", help="count FLOPs at this size (H [W])")
    p.add_argument("--num-classes", type=int, default=None, help="number of classes (default 90)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(run=run_info)
    q = sub.add_parser("list", help="list the model names", description="List the model names (efficientdet_d0 ... efficientdet_lite4).")
    q.set_defaults(run=run_list)


def describe(model: str, image_size: tuple[int, int] | None = None, num_classes: int | None = None) -> dict:
    """Parameters, multiply-adds and config of ``model`` (built on the meta device: instant)."""
    import torch

    from efficientdet.models.flops import count_macs

    from ..models.efficientdet import build_model

    config = get_config(model)
    if num_classes is not None:
        config = config.replace(num_classes=num_classes)
    size = image_size or config.image_size
    with torch.device("meta"):
        net = build_model(config)
    parts = {
        "backbone": net.backbone,
        "feature_net": net.feature_net,
        "class_head": net.class_head,
        "box_head": net.box_head,
    }
    return {
        "model": config.name,
        "image_size": list(size),
        "parameters": sum(p.numel() for p in net.parameters()),
        "parameters_by_part": {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()},
        "macs": count_macs(config, size),
        "config": config.to_dict(),
    }


def run_info(args: argparse.Namespace) -> int:
    from ..export.metadata import is_graph_file

    if is_graph_file(args.model):
        if args.image_size or args.num_classes is not None:  # were ignored: the graph's own were printed
            raise ValueError(
                f"{args.model}: --image-size and --num-classes are for model names; an .onnx file "
                "has its own input size and classes (printed without them)"
            )
        return _graph_info(args.model, args.json)
    if os.path.exists(args.model):  # was "unknown model '<file>'; valid names: ..."
        raise ValueError(
            f"{args.model}: info reads a model name (see `efficientdet list`) or an .onnx file from "
            "`efficientdet export`; TorchScript/torch.export files and checkpoints are not described"
        )
    d = describe(args.model, _checked_size(args.image_size), _checked_classes(args.num_classes))
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    print(f"{d['model']}  input {d['image_size'][0]}x{d['image_size'][1]}")
    print(f"  parameters  {d['parameters'] / 1e6:.2f}M")
    for part, n in d["parameters_by_part"].items():
        print(f"    {part:<12}{n / 1e6:.3f}M")
    print(f"  FLOPs       {d['macs'] / 1e9:.2f}B (multiply-adds, the paper's convention)")
    print("  config")
    for section, values in d["config"].items():
        if isinstance(values, dict):
            print(f"    {section}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
        else:
            print(f"    {section}: {values}")
    return 0


def _checked_size(values: list[int] | None) -> tuple[int, int] | None:
    """``--image-size H [W]`` as (H, W); more values, or sides that are not positive multiples
    of 32, are a usage error naming the flag (they were cut to the first and last, or reached
    torch as a kernel-size error)."""
    if not values:
        return None
    if len(values) > 2 or any(v <= 0 or v % 32 for v in values):
        shown = " ".join(str(v) for v in values)
        raise ValueError(f"--image-size {shown}: give H or H W, each a positive multiple of 32")
    return values[0], values[-1]


def _checked_classes(value: int | None) -> int | None:
    """``--num-classes`` of at least 1 (0 was a traceback, negatives a tensor-shape error)."""
    if value is not None and value < 1:
        raise ValueError(f"--num-classes {value}: must be at least 1")
    return value


def _graph_info(path: str, as_json: bool) -> int:
    """``info FILE.onnx``: the graph's efficientdet metadata (errors name the file)."""
    import os

    from ..export.metadata import read_onnx_metadata

    meta = read_onnx_metadata(path)  # a missing or corrupt file: an error naming it
    if as_json:
        fields = ("model_name", "image_size", "mean", "std", "num_classes", "class_names", "nms_inside",
                  "outputs", "output_layout", "postprocess", "int8")  # fmt: skip
        doc = {"file": path, "bytes": os.path.getsize(path), **{f: getattr(meta, f) for f in fields}}
        print(json.dumps({**doc, "config": meta.config.to_dict()}, indent=2))
        return 0
    names = ", ".join(meta.class_names[:8]) + (", ..." if len(meta.class_names) > 8 else "") if meta.class_names else "unnamed"
    layout = "detections (NMS inside)" if meta.nms_inside else "candidates" if meta.candidates else "raw"
    post = meta.postprocess or {}
    if meta.nms_inside and {"score_threshold", "iou_threshold", "max_detections"} <= post.keys():
        # The graph's fixed thresholds: predict, eval and serve refuse a lower --score-threshold.
        layout = (f"detections (NMS inside: scores >= {post['score_threshold']:g}, IoU {post['iou_threshold']:g}, "
                  f"at most {post['max_detections']} per image)")  # fmt: skip
    print(f"{path}: {meta.model_name}, input {meta.image_size[0]}x{meta.image_size[1]}, "
          f"{meta.num_classes} class{'es' if meta.num_classes != 1 else ''} ({names}), outputs {layout}, {os.path.getsize(path) / 1e6:.1f} MB")  # fmt: skip
    for line in _int8_lines(meta.int8):
        print(f"  {line}")
    return 0


def _int8_lines(int8: dict | None) -> list[str]:
    """How an int8 graph was made (``export_int8``'s record in the metadata)."""
    if not int8:
        return ["float32 (not quantized)"]
    return [
        f"int8 by {int8['quantizer']} (run it with --backend {int8['runtime']}): {int8['calibration_images']} "
        f"calibration images ({int8['calibration']}), weights {int8['weights']}, "
        f"activations {int8['activations']}, float: {', '.join(int8['float_groups']) or 'none'}, "
        f"reduce_range {'on' if int8['reduce_range'] else 'off'}"
    ]


def run_list(args: argparse.Namespace) -> int:
    for name in list_models():
        print(name)
    return 0
