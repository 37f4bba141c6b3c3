"""``efficientdet predict SOURCE...``: detect objects in images, folders, globs and videos.

Writes one annotated image per readable input (same base name; ``.jpg`` for JPEG inputs,
``.png`` otherwise), an annotated MP4 per video (or a PNG frame folder where no encoder is
installed) and ``detections.json``/``.csv``. Unreadable inputs, and images over
``--max-input-pixels``, are reported and skipped. ``--backend onnxruntime`` runs the network in
ONNX Runtime with the same pre- and post-processing (an ``.onnx`` --weights is used as is,
and by default, ``--backend auto``, in the runtime it was exported for: int8 files by NNCF in
OpenVINO; other weights are exported once into ``--onnx-cache``, default ``<out>/onnx-cache``).
Exit status: 0 all inputs done, 1 some failed, 2 usage or weights errors.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from efficientdet.outputs.video import VideoError, open_video, open_video_writer

from .common import (
    Runner,
    add_model_args,
    check_out_folder,
    check_score_threshold,
    check_tile_args,
    load_model,
    make_detector,
    resolve_device,
    too_large_message,
)
from .predict_inputs import PredictInput, check_no_overwrite, check_tile_fits, collect_inputs, output_paths
from .ranks import add_dist_args, build_runner_on_ranks, is_first_rank, join_ranks

if TYPE_CHECKING:  # imported where used: ``efficientdet predict --help`` must not wait for torch
    import numpy as np
    import torch

    from ..engine.distributed import DistInfo

__all__ = ["add_parser", "collect_inputs", "load_model", "make_detector", "resolve_device", "run_predict"]

DEFAULT_WEIGHTS = "efficientdet_d0.coco"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="detect objects in images, folders, globs or videos; write annotated copies + detections",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="image or video files, folders (their images and videos, recursively) or globs")
    add_model_args(p, weights_default=DEFAULT_WEIGHTS)
    p.add_argument("--out", default="predictions", help="output folder (default ./predictions)")
    p.add_argument("--score-threshold", type=float, default=0.3, help="keep detections scoring at least this (0.3)")
    p.add_argument("--classes", default=None, help="comma-separated class names to keep (e.g. cat,dog)")
    p.add_argument("--format", choices=("json", "csv"), default="json", help="detections file format (json)")
    p.add_argument("--no-draw", action="store_true", help="write only the detections file, no annotated images")
    add_dist_args(p)
    p.set_defaults(run=run_predict)


# ----------------------------------------------------------------------------- classes


def _class_filter(spec: str | None, names: Sequence[str] | None, num_classes: int) -> torch.Tensor | None:
    """``--classes`` -> the label indices to keep (None: all)."""
    import torch

    if not spec:
        return None
    keep: list[int] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        if names is not None and item in names:
            keep.append(list(names).index(item))
        elif item.isdigit() and int(item) < num_classes:
            keep.append(int(item))
        else:
            if names:
                hint = "; the model's classes are: " + ", ".join(list(names)[:20]) + (", ..." if len(names) > 20 else "")
            else:
                hint = f"; the model has no class names, use label numbers 0..{num_classes - 1}"
            raise ValueError(f"--classes: unknown class {item!r}{hint}")
    return torch.tensor(sorted(set(keep)), dtype=torch.int64)


def _select(det: dict[str, Any], keep: torch.Tensor | None) -> dict[str, Any]:
    import torch

    if keep is None:
        return det
    mask = torch.isin(det["labels"], keep)
    out = {k: det[k][mask] for k in ("boxes", "scores", "labels")}
    if "names" in det:
        out["names"] = [n for n, m in zip(det["names"], mask.tolist()) if m]
    return out


# ----------------------------------------------------------------------------- running


def _save(image: Any, path: Path) -> None:
    from ..fs import atomic_open

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path) as f:  # a killed run never leaves half an image
            if path.suffix == ".jpg":
                image.save(f, format="JPEG", quality=95)
            else:
                image.save(f, format="PNG")
    except OSError as exc:  # a full disk was a traceback; the atomic write left no partial file
        raise RuntimeError(f"{path}: could not write the annotated image ({exc.strerror or exc}); "
                           "free disk space or choose another --out") from exc  # fmt: skip


def run_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    if args.batch_size < 1:
        raise ValueError(f"--batch-size {args.batch_size}: must be at least 1")
    check_score_threshold(args.score_threshold)
    check_out_folder(args.out, "predict", "annotated images + detections")
    inputs, problems = collect_inputs(args.sources, exclude=Path(args.out))

    def warn(msg: str) -> None:
        tqdm.write(f"efficientdet predict: warning: {msg}", file=sys.stderr)  # keeps the bar intact

    for line in problems if is_first_rank() else ():  # every rank finds them: said once
        warn(line)
    if not inputs:
        raise FileNotFoundError("no inputs: " + "; ".join(problems))
    check_tile_args(args)
    check_tile_fits(args.tile, inputs)
    targets = output_paths(inputs, Path(args.out))
    if not args.no_draw:
        check_no_overwrite(inputs, targets, args.out)
    from ..engine.distributed import cleanup
    from ..engine.sharding import check_shardable

    info = join_ranks(args)  # under torchrun: one share of the inputs per process
    try:
        check_shardable(len(inputs), info, "inputs")
        out = Path(args.out)
        runner = build_runner_on_ranks(args, out, info)
        keep = _class_filter(args.classes, runner.class_names, runner.config.num_classes)
        out.mkdir(parents=True, exist_ok=True)
        from ..inference.protocol import torch_threads

        # Graph runtimes run the network in their own threads: decoding and drawing here stay
        # on one torch thread, as in the detector's own stages (see torch_threads).
        with torch_threads(runner.detector.host_threads):
            return _run(args, inputs, problems, targets, runner, keep, warn, info)
    finally:
        cleanup(info)


def _run(
    args: argparse.Namespace,
    inputs: list[PredictInput],
    problems: list[str],
    targets: list[Path],
    runner: Runner,
    keep: torch.Tensor | None,
    warn: Callable[[str], None],
    info: DistInfo,
) -> int:
    """Detect in this rank's share of the inputs (all of them alone) and write the annotated
    copies; rank 0 gathers every share's detections and writes the one detections file in
    input order (the body of :func:`run_predict`)."""
    from efficientdet.outputs.results import write_detections

    from ..engine.sharding import gather_to_main, merge_in_order, shard_positions

    mine = [(inputs[p], targets[p]) for p in shard_positions(len(inputs), info)]
    images = [(inp, t) for inp, t in mine if inp.kind == "image"]
    videos = [(inp, t) for inp, t in mine if inp.kind == "video"]
    order = {str(inp.path): k for k, inp in enumerate(inputs)}  # images first, then videos, as alone
    image_items: list[tuple[str, dict[str, Any]]] = []
    video_items: list[tuple[tuple[int, int, int], tuple[str, dict[str, Any]]]] = []
    try:
        failed = _predict_images(args, images, runner, keep, warn, bool(images) and info.is_main, image_items)
        for inp, target in videos:
            items: list[tuple[str, dict[str, Any]]] = []
            try:
                written = _predict_video(
                    inp, target, runner.detector, args.score_threshold, keep, not args.no_draw, runner.class_names, items
                )
            except VideoError as exc:
                warn(f"skipped {exc}")
                failed += 1
                continue
            finally:  # an interrupted video keeps the frames it did
                video_items += [((1, order[str(inp.path)], j), item) for j, item in enumerate(items)]
            if written is not None and not written[1]:
                warn(f"{inp.path}: no video encoder installed; annotated frames written as PNGs to {written[0]}")
    except KeyboardInterrupt:
        if not info.enabled:  # alone: the detections so far are written, not lost (ranks cannot gather now)
            _write_interrupted(args, _keyed(image_items, order) + video_items, runner.class_names)
        raise
    keyed = _keyed(image_items, order) + video_items

    gathered = gather_to_main((keyed, failed), info)
    if gathered is None:
        return 1 if failed else 0  # rank 0 writes the merged file and reports
    items = merge_in_order([shard for shard, _ in gathered])
    failed = len(problems) + sum(n for _, n in gathered)
    det_path = write_detections(Path(args.out) / f"detections.{args.format}", items, runner.class_names)
    num_boxes = sum(len(d["scores"]) for _, d in items)
    total = len(inputs) + len(problems)
    print(f"{total - failed} of {total} inputs done, {num_boxes} detections -> {det_path}")
    if failed:
        print(f"{failed} input(s) failed (see the warnings above)", file=sys.stderr)
    return 1 if failed else 0


def _write_interrupted(
    args: argparse.Namespace, keyed: list[tuple[tuple[int, int, int], tuple[str, dict[str, Any]]]], names: Any
) -> None:
    """The detections file of the inputs done before Ctrl-C, in input order."""
    from efficientdet.outputs.results import write_detections

    done = [item for _, item in sorted(keyed, key=lambda kv: kv[0])]
    path = write_detections(Path(args.out) / f"detections.{args.format}", done, names)
    print(f"efficientdet predict: interrupted; the detections of {len(done)} inputs so far -> {path}", file=sys.stderr)


def _keyed(
    items: list[tuple[str, dict[str, Any]]], order: dict[str, int]
) -> list[tuple[tuple[int, int, int], tuple[str, dict[str, Any]]]]:
    """Image items with their place in the input order (images before videos)."""
    return [((0, order[f], 0), (f, d)) for f, d in items]


def _predict_images(
    args: argparse.Namespace,
    images: list[tuple[PredictInput, Path]],
    runner: Runner,
    keep: torch.Tensor | None,
    warn: Callable[[str], None],
    progress: bool,
    items: list[tuple[str, dict[str, Any]]],
) -> int:
    """Detect in ``images`` (input, annotated copy's path) in batches of ``args.batch_size``;
    appends ``(path, detections)`` per readable image to ``items`` as each batch is done (an
    interrupted run keeps them); returns the count of unreadable ones."""
    from tqdm import tqdm

    from efficientdet.outputs.visualize import draw_detections

    from ..data.images import ImageError, load_for_model, load_image
    from ..data.reduced import ReducedImage, full_size

    detector, class_names, thr = runner.detector, runner.class_names, args.score_threshold
    max_pixels = runner.max_input_pixels
    failed = 0
    bar = tqdm(total=len(images), desc="predict", unit="img", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    pending: list[tuple[PredictInput, Path, Any]] = []

    def flush() -> None:
        if not pending:
            return
        dets = detector([img for _, _, img in pending], score_threshold=thr)
        for (inp, target, img), det in zip(pending, dets):
            det = _select(det, keep)
            items.append((str(inp.path), {**det, "image_size": full_size(img)}))
            if not args.no_draw:
                # The annotated copy is full size: a photo the model saw reduced is decoded again.
                full = load_image(inp.path, max_pixels=max_pixels) if isinstance(img, ReducedImage) else img
                _save(draw_detections(full, det, class_names), target)
        bar.update(len(pending))
        pending.clear()

    for inp, target in images:
        try:
            # Decoded here, not by the Detector (as it would: large JPEGs at a reduced scale for
            # its input size): one bad file must not sink its whole batch.
            pending.append((inp, target, load_for_model(inp.path, detector.decode_size, max_pixels=max_pixels)))
        except ImageError as exc:
            warn(f"skipped {too_large_message(exc, max_pixels) or exc}")
            failed += 1
            bar.update(1)
            continue
        if len(pending) >= args.batch_size:
            flush()
    flush()
    bar.close()
    return failed


def _predict_video(
    inp: PredictInput,
    target: Path,
    detector: Any,
    thr: float,
    keep: torch.Tensor | None,
    draw: bool,
    class_names: Sequence[str] | None,
    items: list[tuple[str, dict[str, Any]]],
) -> tuple[Path, bool] | None:
    """Detect in every frame (batched); entries ``"<video>#frame=N"``. Returns the writer's
    (path, is_video) when drawing, else None. Raises VideoError when the video cannot be read."""
    import numpy as np
    from tqdm import tqdm

    from efficientdet.outputs.visualize import draw_detections

    reader = open_video(inp.path)
    writer = None
    chunk: list[np.ndarray] = []
    index = 0
    bar = tqdm(desc=inp.path.name, unit="frame", file=sys.stderr, dynamic_ncols=True)

    def flush() -> None:
        nonlocal writer, index
        if not chunk:
            return
        dets = detector(chunk, score_threshold=thr)
        for frame, det in zip(chunk, dets):
            det = _select(det, keep)
            items.append((f"{inp.path}#frame={index}", {**det, "image_size": frame.shape[:2]}))
            index += 1
            if draw:
                if writer is None:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    writer = open_video_writer(target, reader.fps, (frame.shape[1], frame.shape[0]))
                writer.write(np.asarray(draw_detections(frame, det, class_names)))
        bar.update(len(chunk))
        chunk.clear()

    try:
        for frame in reader.frames():
            chunk.append(frame)
            if len(chunk) >= detector.batch_size:
                flush()
        flush()
    except BaseException:
        if writer is not None:
            writer.abort()  # no truncated video (or half a frame folder) under the real name
        raise
    else:
        if writer is not None:
            writer.close()
    finally:
        bar.close()
    if index == 0:
        raise VideoError(f"{inp.path}: no frames could be decoded")
    return (writer.path, writer.is_video) if writer is not None else None

