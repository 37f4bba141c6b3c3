"""What ``predict`` and ``eval`` share: model/backend arguments, loading, the input-size limit.

``--backend onnxruntime`` runs the network in ONNX Runtime and everything else (pre-processing,
decoding, NMS with the user's thresholds and ``--nms``) as the torch backend does, so both give
the same detections. ``--weights`` is then either an ``.onnx`` file written by ``efficientdet
export`` (used as is: its metadata gives input size, mean/std, class names) or ordinary
weights, which are exported once without NMS into ``--onnx-cache`` (default ``<out>/onnx-cache``)
and reused while the weights file and the model options are unchanged.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import ModelConfig

if TYPE_CHECKING:  # imported where used: ``efficientdet --help`` must not wait for torch
    import torch

    from ..data.images import ImageError
    from ..models.efficientdet import EfficientDet

__all__ = [
    "BACKENDS",
    "Runner",
    "add_model_args",
    "build_runner",
    "load_model",
    "make_detector",
    "resolve_device",
    "too_large_message",
]

BACKENDS = ("torch", "onnxruntime")
_INSTALL_HINT = "pip install 'efficientdet[export]'"


def add_model_args(p: argparse.ArgumentParser, weights_default: str | None = None) -> None:
    """The model, backend, device, input and TTA options (same meaning in predict and eval)."""
    if weights_default is None:
        p.add_argument("--weights", required=True, help="checkpoint, registered name (efficientdet_d0.coco), URL or .onnx")
    else:
        p.add_argument(
            "--weights", default=weights_default,
            help=f"checkpoint, registered name, URL or .onnx (default {weights_default})",
        )  # fmt: skip
    p.add_argument("--model", default=None, help="model name, when the weights do not say (effdet .pth files)")
    p.add_argument(
        "--backend", choices=BACKENDS, default="torch",
        help="run the network in torch, or in ONNX Runtime (exports the weights once, see --onnx-cache)",
    )  # fmt: skip
    p.add_argument("--onnx-cache", default=None, help="folder for exported ONNX graphs (default <out>/onnx-cache)")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (8)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--image-size", type=int, default=None, help="model input side, a multiple of 32 (default: the model's)")
    p.add_argument(
        "--max-input-pixels", type=int, default=None,
        help="refuse images with more pixels than this (default: the model's, 100 million)",
    )  # fmt: skip
    p.add_argument("--tta", action="store_true", help="test-time augmentation: horizontal flip (+ --tta-scales)")
    p.add_argument("--tta-scales", default="1.0", help="TTA input scales, comma-separated (default 1.0)")
    p.add_argument("--tta-merge", choices=("nms", "wbf"), default="nms", help="merge TTA boxes by NMS or box fusion")


def resolve_device(name: str | None) -> torch.device:
    """``None`` -> cuda when available, else cpu; asking for cuda without it is a ValueError."""
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def load_model(
    weights: str, name: str | None = None, image_size: int | None = None, max_input_pixels: int | None = None
) -> EfficientDet:
    """``create_model`` for the CLI, with ``image_size`` (a positive multiple of 32) checked."""
    from ..factory import create_model

    overrides: dict[str, Any] = {}
    if image_size is not None:
        if image_size <= 0 or image_size % 32:
            raise ValueError(f"--image-size {image_size}: must be a positive multiple of 32")
        overrides["image_size"] = image_size
    if max_input_pixels is not None:
        overrides["preprocess.max_input_pixels"] = _check_limit(max_input_pixels)
    return create_model(name, weights=weights, **overrides)


def make_detector(model: EfficientDet, args: argparse.Namespace, device: torch.device) -> Any:
    """A Detector, wrapped in a TTADetector when ``--tta`` is given."""
    from efficientdet.inference.detector import Detector

    detector = Detector(model, device=device, batch_size=args.batch_size)
    if not getattr(args, "tta", False):
        return detector
    from efficientdet.inference.tta import TTADetector

    try:
        scales = tuple(float(s) for s in args.tta_scales.split(",") if s.strip())
    except ValueError:
        raise ValueError(f"--tta-scales {args.tta_scales!r}: expected comma-separated numbers") from None
    return TTADetector(detector, flips=True, scales=scales, merge=args.tta_merge)


def _check_limit(value: int) -> int:
    if value < 1:
        raise ValueError(f"--max-input-pixels {value}: must be at least 1")
    return value


# ----------------------------------------------------------------------------- backends


@dataclass
class Runner:
    """A loaded model, whichever backend: ``detector(images)`` gives Detector-style dicts."""

    detector: Any  # Detector, TTADetector or OnnxDetector
    config: ModelConfig
    class_names: list[str] | None
    backend: str
    model: EfficientDet | None = None  # torch backend only
    onnx_path: Path | None = None  # onnxruntime backend only
    nms_inside: bool = False

    @property
    def max_input_pixels(self) -> int:
        pre = getattr(self.detector, "preprocess_config", None) or self.config.preprocess
        return int(pre.max_input_pixels)


def build_runner(args: argparse.Namespace, out: Path, device: torch.device | None = None) -> Runner:
    """Load ``args.weights`` for ``args.backend``; ``out`` is the command's output folder (the
    default ONNX cache lives under it). ``device``: torch backend's, default from ``--device``."""
    if args.backend == "onnxruntime":
        return _onnx_runner(args, out)
    if str(args.weights).lower().endswith(".onnx"):
        raise ValueError(f"--weights {args.weights}: an ONNX graph runs only with --backend onnxruntime")
    device = device or resolve_device(args.device)
    model = load_model(args.weights, args.model, args.image_size, args.max_input_pixels)
    detector = make_detector(model, args, device)
    return Runner(detector, model.config, model.class_names, "torch", model=model)


def _require_onnxruntime() -> None:
    missing = [m for m in ("onnxruntime", "onnx") if importlib.util.find_spec(m) is None]
    if missing:
        raise RuntimeError(f"--backend onnxruntime needs {' and '.join(missing)}, not installed here: {_INSTALL_HINT}")


def _providers(device: str | None) -> list[Any]:
    """ONNX Runtime execution providers for ``--device`` (None: CUDA when both torch and
    onnxruntime can use it, else CPU)."""
    import onnxruntime as ort
    import torch

    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if device is None:
        use_cuda = has_cuda and torch.cuda.is_available()
        return ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]
    dev = torch.device(device)
    if dev.type == "cpu":
        return ["CPUExecutionProvider"]
    if dev.type != "cuda":
        raise ValueError(f"--device {device}: --backend onnxruntime runs on cpu or cuda only")
    if not has_cuda:
        raise ValueError(
            f"--device {device}: this onnxruntime has no CUDA support (providers: "
            f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu or use --device cpu"
        )
    return [("CUDAExecutionProvider", {"device_id": dev.index or 0}), "CPUExecutionProvider"]


def _onnx_runner(args: argparse.Namespace, out: Path) -> Runner:
    if getattr(args, "tta", False):
        raise ValueError("--tta is not available with --backend onnxruntime (the graph has a fixed input size); "
                         "use --backend torch for test-time augmentation")  # fmt: skip
    _require_onnxruntime()
    from ..export.metadata import read_onnx_metadata
    from ..export.runtime import OnnxDetector

    providers = _providers(args.device)  # checked before a possibly long export
    weights = str(args.weights)
    if weights.lower().endswith(".onnx"):
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"--weights {weights}: no such file")
        meta = read_onnx_metadata(path)
        _check_graph_options(args, path, meta)
    else:
        path = _exported_graph(args, out)
        meta = read_onnx_metadata(path)
    detector = OnnxDetector(path, providers=providers, batch_size=args.batch_size)
    if args.max_input_pixels is not None:
        _check_limit(args.max_input_pixels)
        # The graph's metadata carries the exporting model's limit; the user's wins.
        pre = getattr(detector, "preprocess_config", None)
        if pre is not None:
            detector.preprocess_config = dataclasses.replace(pre, max_input_pixels=args.max_input_pixels)
    return Runner(detector, meta.config, meta.class_names, "onnxruntime", onnx_path=path, nms_inside=meta.nms_inside)


def _check_graph_options(args: argparse.Namespace, path: Path, meta: Any) -> None:
    """A ready graph fixes the variant and the input size: options asking otherwise are errors."""
    from ..variants import get_config

    if args.model is not None:
        try:
            wanted = get_config(args.model).name
        except ValueError:
            wanted = args.model
        if wanted != meta.model_name:
            raise ValueError(f"{path}: this graph is {meta.model_name}, not {args.model}")
    if args.image_size is not None and (args.image_size, args.image_size) != tuple(meta.image_size):
        h, w = meta.image_size
        raise ValueError(
            f"--image-size {args.image_size}: {path} has a fixed {h}x{w} input; drop --image-size or re-export"
        )
    thr = getattr(args, "score_threshold", None)
    graph_thr = (meta.postprocess or {}).get("score_threshold")
    if meta.nms_inside and thr is not None and graph_thr is not None and thr < graph_thr:
        raise ValueError(
            f"{path} has NMS inside that drops scores below {graph_thr}; --score-threshold {thr} needs a "
            "graph exported without --nms (or pass the normal weights)"
        )


def _exported_graph(args: argparse.Namespace, out: Path) -> Path:
    """Export ``args.weights`` without NMS into the cache (once per weights file + options)."""
    import torch

    from ..export import export_onnx
    from ..weights.registry import resolve_weights

    model = load_model(args.weights, args.model, args.image_size).eval()
    config = model.config
    assert config is not None
    file, _ = resolve_weights(args.weights)
    stat = file.stat()
    # The key: which file (path, size, mtime) and the exported model's config and names. The
    # input-size limit is applied at run time, so it is not part of the graph.
    key_doc = {
        "file": str(file.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
        "config": config.replace(**{"preprocess.max_input_pixels": 1}).to_dict(),
        "class_names": model.class_names, "torch": torch.__version__, "layout": "candidates",
    }  # fmt: skip
    key = hashlib.sha256(json.dumps(key_doc, sort_keys=True, default=str).encode()).hexdigest()[:12]
    cache = Path(args.onnx_cache) if args.onnx_cache else out / "onnx-cache"
    h, w = config.image_size
    path = cache / f"{config.name}-{h}x{w}-{key}.onnx"
    if path.is_file():
        print(f"onnxruntime backend: using the cached graph {path}", file=sys.stderr)
        return path
    print(f"onnxruntime backend: exporting {config.name} ({h}x{w}, no NMS inside) to {path} ...", file=sys.stderr)
    # candidates=True: the graph pre-selects the anchors post-processing needs (exact, ~10x less
    # for Python to read); NMS stays outside so soft NMS and any threshold still work.
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated but ~10x faster to run than dynamo's.
            warnings.simplefilter("ignore")
            export_onnx(model, path, candidates=True, dynamo=False)
    except Exception as err:  # noqa: BLE001 - fall back to the default exporter, then report
        print(f"onnxruntime backend: TorchScript exporter failed ({err}); trying dynamo", file=sys.stderr)
        export_onnx(model, path, candidates=True, dynamo=True)
    return path


# ----------------------------------------------------------------------------- input-size limit


def too_large_message(exc: ImageError, limit: int) -> str | None:
    """CLI wording for an image over the pixel limit (None: ``exc`` is about something else)."""
    if not exc.too_large:
        return None
    if exc.pixels is None:
        return f"{exc}; to accept it, raise the limit with --max-input-pixels (now {limit:,})"
    size = f" ({exc.size})" if exc.size else ""
    return (
        f"{exc.name}: image has {exc.pixels:,} pixels{size}, over the limit of {limit:,} "
        f"(decoding it could exhaust memory); if you trust the file, rerun with --max-input-pixels {exc.pixels}"
    )