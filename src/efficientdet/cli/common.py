"""What ``predict`` and ``eval`` share: model/backend arguments, loading, the input-size limit.

``--backend onnxruntime`` runs the network in ONNX Runtime (``--backend openvino``: in OpenVINO,
CPU only) and everything else (pre-processing, decoding, NMS with the user's thresholds and
``--nms``) as the torch backend does, so all give the same detections. ``--weights`` is then
either an ``.onnx`` file written by ``efficientdet export`` (used as is: its metadata gives
input size, mean/std, class names) or ordinary weights, which are exported once without NMS
into ``--onnx-cache`` (default ``<out>/onnx-cache``) and reused while the weights file and the
model options are unchanged (``OnnxDetector.from_weights``). ``--backend auto``, the default,
runs checkpoints in torch and ``.onnx`` files where they were exported for
(:func:`resolve_backend`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import ModelConfig
from ..export.metadata import is_graph_file, read_onnx_metadata

if TYPE_CHECKING:  # imported where used: ``efficientdet --help`` must not wait for torch
    import torch

    from ..data.images import ImageError
    from ..data.records import DatasetIndex
    from ..inference.protocol import ImageDetector
    from ..models.efficientdet import EfficientDet

__all__ = [
    "BACKENDS",
    "GRAPH_BACKENDS",
    "Runner",
    "add_model_args",
    "build_runner",
    "check_image_size",
    "check_max_input_pixels",
    "check_out_file",
    "check_tile_args",
    "check_tile_fits",
    "load_model",
    "make_detector",
    "read_split_arg",
    "resolve_backend",
    "resolve_device",
    "too_large_message",
]

BACKENDS = ("auto", "torch", "onnxruntime", "openvino")
GRAPH_BACKENDS = ("onnxruntime", "openvino")  # run an exported .onnx graph


def resolve_backend(backend: str, weights: str | os.PathLike[str]) -> str:
    """``--backend auto`` -> where ``weights`` runs: an ``.onnx`` graph in the runtime its
    metadata names (``export --int8``'s NNCF files: OpenVINO, which alone runs their
    per-channel activation zero points; float and ONNX Runtime int8 graphs: ONNX Runtime),
    anything else in torch. Other values are returned as given."""
    if backend != "auto":
        return backend
    if not is_graph_file(weights):
        return "torch"
    int8 = read_onnx_metadata(weights).int8 or {}  # a missing or corrupt file: an error naming it
    return "openvino" if int8.get("runtime") == "openvino" else "onnxruntime"


def add_model_args(
    p: argparse.ArgumentParser,
    weights_default: str | None = None,
    cache_default: str = "<out>/onnx-cache",
    batch_size: bool = True,
) -> None:
    """The model, backend, device, input and TTA options (same meaning in predict, eval and
    serve); ``cache_default`` is the --onnx-cache default in the help, and ``batch_size=False``
    leaves out --batch-size (serve batches by --max-batch)."""
    if weights_default is None:
        p.add_argument("--weights", required=True, help="checkpoint, registered name (efficientdet_d0.coco), URL or .onnx")
    else:
        p.add_argument(
            "--weights", default=weights_default,
            help=f"checkpoint, registered name, URL or .onnx (default {weights_default})",
        )  # fmt: skip
    p.add_argument("--model", default=None, help="model name, when the weights do not say (effdet .pth files)")
    p.add_argument(
        "--backend", choices=BACKENDS, default="auto",
        help="run the network in torch, ONNX Runtime or OpenVINO (CPU); the last two export the weights once "
             "(see --onnx-cache) or run an exported .onnx, float or int8. auto (default): checkpoints in torch, "
             ".onnx files in the runtime they were exported for (int8 by NNCF: openvino, else onnxruntime)",
    )  # fmt: skip
    p.add_argument("--onnx-cache", default=None, help=f"folder for exported ONNX graphs (default {cache_default})")
    if batch_size:
        p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (8)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--image-size", type=int, default=None, help="model input side, a multiple of 32 (default: the model's)")
    p.add_argument(
        "--max-input-pixels", type=int, default=None,
        help="refuse images with more pixels than this (default: the model's, 100 million)",
    )  # fmt: skip
    p.add_argument("--tta", action="store_true", help="test-time augmentation: horizontal flip (+ --tta-scales)")
    # The companions of --tta and --tile default to None, so one given without them is refused
    # (check_tile_args fills in the defaults): it used to be ignored without a word.
    p.add_argument("--tta-scales", default=None, help="TTA input scales, comma-separated (default 1.0)")
    p.add_argument("--tta-merge", choices=("nms", "wbf"), default=None, help="merge TTA boxes by NMS or box fusion (nms)")
    p.add_argument(
        "--tile", type=int, default=None,
        help="sliced inference: overlapping TILE x TILE full-resolution tiles + the whole image (multiple of 32)",
    )  # fmt: skip
    p.add_argument("--tile-overlap", type=float, default=None, help="tile overlap, a fraction in [0, 1) (0.2)")
    p.add_argument("--tile-merge", choices=("nms", "wbf"), default=None, help="merge tile boxes by NMS or box fusion (nms)")


def resolve_device(name: str | None) -> torch.device:
    """``None`` -> cuda when available, else cpu; asking for cuda without it is a ValueError."""
    import torch

    from ..devices import parse_device

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return parse_device(name, "--device", "cpu, cuda or cuda:N", "--device cpu")


def load_model(
    weights: str, name: str | None = None, image_size: int | None = None, max_input_pixels: int | None = None
) -> EfficientDet:
    """``create_model`` for the CLI, with ``image_size`` (a positive multiple of 32) checked."""
    from ..factory import create_model

    overrides: dict[str, Any] = {}
    if image_size is not None:
        check_image_size(image_size)
        overrides["image_size"] = image_size
    if max_input_pixels is not None:
        overrides["preprocess.max_input_pixels"] = check_max_input_pixels(max_input_pixels)
    return create_model(name, weights=weights, **overrides)


def check_image_size(image_size: int) -> None:
    """``--image-size``: a positive multiple of 32 (the network's largest stride)."""
    if image_size <= 0 or image_size % 32:
        raise ValueError(f"--image-size {image_size}: must be a positive multiple of 32")


def make_detector(model: EfficientDet, args: argparse.Namespace, device: torch.device) -> Any:
    """A Detector, wrapped in a TTADetector when ``--tta`` is given."""
    from ..inference.detector import Detector

    detector = Detector(model, device=device, batch_size=args.batch_size)
    if not getattr(args, "tta", False):
        return detector
    from ..inference.tta import TTADetector

    try:
        scales = tuple(float(s) for s in args.tta_scales.split(",") if s.strip())
    except ValueError:
        raise ValueError(f"--tta-scales {args.tta_scales!r}: expected comma-separated numbers") from None
    try:  # TTADetector checks the scales; the message names the flag
        return TTADetector(detector, flips=True, scales=scales, merge=args.tta_merge)
    except ValueError as exc:
        raise ValueError(f"--tta-scales {args.tta_scales!r}: expected positive numbers, e.g. 0.8,1,1.2 ({exc})") from None


def check_max_input_pixels(value: int) -> int:
    """``--max-input-pixels``: at least 1; returns it."""
    if value < 1:
        raise ValueError(f"--max-input-pixels {value}: must be at least 1")
    return value


# ----------------------------------------------------------------------------- backends


@dataclass
class Runner:
    """A loaded model, whichever backend: ``detector(images)`` gives Detector-style dicts."""

    detector: ImageDetector  # Detector, TTADetector or OnnxDetector
    config: ModelConfig
    class_names: list[str] | None
    backend: str
    model: EfficientDet | None = None  # torch backend only
    onnx_path: Path | None = None  # onnxruntime backend only
    nms_inside: bool = False
    min_score_threshold: float = 0.0  # a graph with NMS inside drops lower scores itself

    @property
    def max_input_pixels(self) -> int:
        return int(self.detector.preprocess_config.max_input_pixels)


def build_runner(args: argparse.Namespace, out: Path, device: torch.device | None = None) -> Runner:
    """Load ``args.weights`` for ``args.backend``; ``out`` is the command's output folder (the
    default ONNX cache lives under it). ``device``: torch backend's, default from ``--device``.
    With ``--tile`` the detector is wrapped in a ``SlicedDetector``."""
    tile = getattr(args, "tile", None)
    check_tile_args(args)  # before any weights are loaded
    runner = _build_runner(args, out, device)
    if tile is not None:
        from ..inference.sliced import SlicedDetector

        runner.detector = SlicedDetector(runner.detector, tile, args.tile_overlap, args.tile_merge)
    return runner


def check_score_threshold(value: float) -> None:
    """A ``--score-threshold`` is a score in 0..1 (the detectors' own rule, naming the flag)."""
    from ..inference.protocol import check_score_threshold as check

    check(value, "--score-threshold")


def check_out_folder(out: str | os.PathLike[str], command: str, writes: str) -> None:
    """A command that writes into the folder ``--out`` refuses an existing file there before
    any work (it used to end in a FileExistsError traceback once the work was done), and an
    ``--out`` that cannot be created or written in: under a file, or in a folder without write
    permission (a NotADirectoryError / PermissionError traceback once the model was loaded)."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {out}: is a file; {command} writes into a folder ({writes})")
    _check_creatable(out, path)


def check_out_file(out: str | os.PathLike[str], flag: str = "--out") -> None:
    """A command that writes the file ``out`` (given as ``flag``) refuses, before any work, one
    it could not create: under a file (``export --out m.onnx/x.onnx`` was a FileExistsError
    traceback after the whole export) or in a folder without write permission."""
    _check_creatable(out, Path(out).parent, flag)


def _check_creatable(out: str | os.PathLike[str], path: Path, flag: str = "--out") -> None:
    """The folder ``path`` (``out`` or the one holding it) exists and is writable, or can be made."""
    base = path
    while not base.exists() and base.parent != base:
        base = base.parent  # the folder it would be created in
    if base.exists() and not base.is_dir():
        raise ValueError(f"{flag} {out}: cannot create a folder under {base}, which is a file")
    if base.is_dir() and not os.access(base, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {out}: cannot write in {base} (permission denied); choose another {flag}")


_COMPANIONS = {"tta_scales": ("tta", "1.0"), "tta_merge": ("tta", "nms"), "tile_overlap": ("tile", 0.2),
               "tile_merge": ("tile", "nms")}  # fmt: skip


def check_tile_args(args: argparse.Namespace) -> None:
    """``--tile`` a positive multiple of the stride (32) and ``--tile-overlap`` in [0, 1), if given;
    ``--tta-*`` without ``--tta`` and ``--tile-*`` without ``--tile`` are refused (they would be
    ignored), and their defaults filled in where they apply (so a second call finds the same)."""
    for name, (needs, default) in _COMPANIONS.items():
        value, needed = getattr(args, name, None), getattr(args, needs, None)
        applies = needed is not None and needed is not False  # --tile 0 is given (and refused below)
        if value is not None and not applies:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} needs --{needs}: without it {flag} would be ignored")
        if value is None and applies and hasattr(args, name):
            setattr(args, name, default)
    tile = getattr(args, "tile", None)
    if tile is not None:
        if tile <= 0 or tile % 32:
            raise ValueError(f"--tile {tile}: must be a positive multiple of the model's stride (32)")
        if not 0.0 <= args.tile_overlap < 1.0:
            raise ValueError(f"--tile-overlap {args.tile_overlap}: must be in [0, 1)")


def read_split_arg(
    dataset: str, split: str | None, default_split: str, command: str, allow_outside_root: bool = False
) -> tuple[DatasetIndex, str]:
    """DATASET as a command reads it -> (index, format): ``--split`` where the format has splits,
    else ``default_split`` as train/eval read it. A COCO file is its own split: ``--split`` is
    ignored with a note (passing it on to the COCO reader was a TypeError traceback)."""
    from ..data.formats import detect_format, read_dataset, read_split

    fmt = detect_format(dataset)
    if fmt == "coco" and split is not None:
        print(f"efficientdet {command}: note: --split is ignored for COCO; {dataset} is the split", file=sys.stderr)
    if split is not None and fmt != "coco":
        return read_dataset(dataset, split=split, allow_outside_root=allow_outside_root), fmt
    return read_split(dataset, default_split, allow_outside_root=allow_outside_root), fmt


def check_tile_fits(tile: int | None, images: Iterable[tuple[Path, tuple[int, int] | None]]) -> None:
    """A ``--tile`` larger than an image is an error naming the file, found before any work
    (``images``: (path, (h, w) or None: read from the header); unreadable ones are left to the run,
    which reports and skips them). Otherwise it stopped the run at that image's batch, naming only
    "image #k" of the batch."""
    from ..data.images import ImageError, image_size_of

    if tile is None:
        return
    for path, size in images:
        if size is None:
            try:
                size = image_size_of(path)
            except ImageError:
                continue
        h, w = size
        if tile > min(h, w):
            fit = min(h, w) // 32 * 32
            hint = f"use a tile of at most {fit} or leave that image out" if fit else "leave that image out (tiles are at least 32)"
            raise ValueError(f"--tile {tile}: larger than {path} ({w}x{h} pixels, WxH); {hint}")


def _build_runner(args: argparse.Namespace, out: Path, device: torch.device | None) -> Runner:
    backend = resolve_backend(args.backend, args.weights)
    if backend in GRAPH_BACKENDS:
        return _onnx_runner(args, out, backend)
    if is_graph_file(args.weights):
        raise ValueError(f"--weights {args.weights}: an ONNX graph runs only with --backend onnxruntime or openvino")
    device = device or resolve_device(args.device)
    model = load_model(args.weights, args.model, args.image_size, args.max_input_pixels)
    detector = make_detector(model, args, device)
    assert model.config is not None  # create_model sets it
    return Runner(detector, model.config, model.class_names, "torch", model=model)


def _onnx_runner(args: argparse.Namespace, out: Path, backend: str) -> Runner:
    if getattr(args, "tta", False):
        raise ValueError(f"--tta is not available with --backend {backend} (the graph has a fixed input size); "
                         "use --backend torch for test-time augmentation")  # fmt: skip
    if args.max_input_pixels is not None:
        check_max_input_pixels(args.max_input_pixels)
    from ..export.cache import require_onnxruntime

    require_onnxruntime()
    from ..export.runtime import OnnxDetector

    from_weights, device = OnnxDetector.from_weights, args.device
    if backend == "openvino":
        from ..export.openvino import OpenVinoDetector, require_openvino

        require_openvino()
        from_weights = OpenVinoDetector.from_weights
        # CPU only: no --device meant torch's default (CUDA where there is one), which OpenVINO
        # refused, and --device cuda got ONNX Runtime's "install onnxruntime-gpu"
        if device is not None and str(device).split(":")[0] != "cpu":
            raise ValueError(f"--device {device}: --backend openvino runs on the CPU only; use --backend onnxruntime for CUDA")
        device = "cpu"
    detector = from_weights(
        args.weights, Path(args.onnx_cache) if args.onnx_cache else out / "onnx-cache", model_name=args.model,
        image_size=args.image_size, device=device, batch_size=args.batch_size,
        max_input_pixels=args.max_input_pixels, score_threshold=getattr(args, "score_threshold", None),
    )  # fmt: skip
    meta = detector.metadata
    floor = float((meta.postprocess or {}).get("score_threshold") or 0.0) if meta.nms_inside else 0.0
    return Runner(detector, meta.config, meta.class_names, backend, onnx_path=Path(detector.path),
                  nms_inside=meta.nms_inside, min_score_threshold=floor)  # fmt: skip


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
