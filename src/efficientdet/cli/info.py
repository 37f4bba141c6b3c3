"""``efficientdet info MODEL`` and ``efficientdet list``: what a variant is and costs."""

from __future__ import annotations

import argparse
import json

from ..variants import get_config, list_models


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="parameters, FLOPs and the resolved config of a model")
    p.add_argument("model", help="a model name (see `efficientdet list`)")
    p.add_argument("--image-size", type=int, nargs="+", metavar="N", help="count FLOPs at this size (H [W])")
    p.add_argument("--num-classes", type=int, default=None, help="number of classes (default 90)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(run=run_info)
    q = sub.add_parser("list", help="list the model names")
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
    size = None
    if args.image_size:
        size = (args.image_size[0], args.image_size[-1])
    d = describe(args.model, size, args.num_classes)
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


def run_list(args: argparse.Namespace) -> int:
    for name in list_models():
        print(name)
    return 0
