"""``export_int8``: a model -> a calibrated int8 ONNX file, with how closely it follows float.

The steps: the float network graph (``export_onnx``'s raw layout), its calibration inputs
(the images through the very preprocessing every backend runs), the quantizer
(:func:`~efficientdet.export.quantize.quantize_network`), the int8-vs-float output errors on
held-out images (:mod:`~efficientdet.export.faithfulness`), then the layout the file is used
in (candidates or NMS attached in float). The file is written atomically: nothing on failure.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .faithfulness import Faithfulness, measure_faithfulness
from .quantize import Int8Options, int8_candidates, int8_description, quantize_network, resolve_method

__all__ = ["HOLDOUT_IMAGES", "candidate_methods", "export_int8", "total_error"]

# Held-out images measured after quantizing (when the calibration set has them): enough that
# one odd photo does not set the numbers, few enough to cost seconds.
HOLDOUT_IMAGES = 32


def export_int8(
    model: Any,
    path: str | os.PathLike[str],
    calibration: Sequence[Any],
    options: Int8Options | None = None,
    *,
    holdout: Sequence[Any] = (),
    image_size: int | tuple[int, int] | None = None,
    batch_size: int = 1,
    dynamic_batch: bool = True,
    include_postprocess: bool = False,
    candidates: bool | None = None,
    score_threshold: float | None = None,
    max_detections: int | None = None,
    check: bool = True,
) -> Path:
    """Export ``model`` as an int8 ONNX graph at ``path`` (written atomically; nothing on failure).

    ``calibration``: images (uint8 [3, H, W] tensors, or anything ``load_image`` takes), each
    preprocessed exactly as ``OnnxDetector.prepare`` does at run time. ``holdout``: images like
    them that did not calibrate; the int8 outputs are compared with float on them (on up to
    :data:`HOLDOUT_IMAGES` calibration images when there are none) and the errors recorded
    in the metadata (``int8["faithfulness"]``, see :class:`Faithfulness`). The layouts are
    ``export_onnx``'s (raw, ``include_postprocess``, ``candidates``; ``candidates=None``: the
    faster one for the quantizer's runtime, :func:`int8_candidates`, unless NMS is inside);
    only the network is quantized, the post-processing parts stay float.
    """
    import onnx

    from ..fs import atomic_path
    from .onnx import attach_candidates, attach_postprocess, check_onnx, export_onnx

    options = options or Int8Options()
    if not calibration:
        raise ValueError("--calibration: no calibration images")
    if candidates is None:
        candidates = not include_postprocess and int8_candidates(model.config.num_classes, options.quantizer)
    if include_postprocess and candidates:
        raise ValueError("include_postprocess and candidates are exclusive: NMS inside needs no pre-selection")
    held = list(holdout)[:HOLDOUT_IMAGES]
    methods = candidate_methods(options, model, held_out=bool(held))
    with tempfile.TemporaryDirectory(prefix="efficientdet-int8-") as tmp:
        raw = Path(tmp) / "network.onnx"
        # The TorchScript exporter: its node names are what the float groups match.
        export_onnx(model, raw, image_size, batch_size, dynamic_batch, dynamo=False, check=False)
        batches = _prepared(raw, calibration)
        measured = options.quantizer == "nncf"  # see _faithfulness
        measure_on = _prepared(raw, held) if held and measured else batches[:HOLDOUT_IMAGES]
        quantized = _quantize_most_faithful(raw, batches, measure_on, options, methods, held_out=bool(held))
        out = Path(path)
        if include_postprocess:
            return attach_postprocess(
                quantized, out, score_threshold=score_threshold, max_detections=max_detections, dynamo=False, check=check
            )
        if candidates:
            return attach_candidates(quantized, out, dynamo=False, check=check)
        with atomic_path(out) as dst:
            onnx.save(onnx.load(os.fspath(quantized)), os.fspath(dst))
            if check:
                check_onnx(dst, batch_size, label=out)
        return out


def candidate_methods(options: Int8Options, model: Any, held_out: bool) -> tuple[str, ...]:
    """The range methods ``export_int8`` tries; with more than one it keeps the most faithful.

    ``method="auto"`` on an NNCF export of a network with unbounded activations (Swish: D0-D7)
    tries quantile and min-max ranges when there are held-out images to judge them on: which
    one follows float more closely differs between models (the clipping that removes a rare
    extreme activation can also cut a confident score; docs/quantization.md). Otherwise the
    single method :func:`resolve_method` picks, or the one asked for.
    """
    resolved = resolve_method(options, model).method
    if options.method == "auto" and resolved == "quantile" and held_out:
        return ("quantile", "minmax")
    return (resolved,)


def _quantize_most_faithful(
    raw: Path, batches: Sequence[np.ndarray], measure_on: Sequence[np.ndarray], options: Int8Options,
    methods: Sequence[str], held_out: bool,
) -> Path:  # fmt: skip
    """Quantize ``raw`` with each of ``methods``, measure each file against float on
    ``measure_on`` and return the one with the smallest score + box error (its metadata records
    its measurement and, when several were tried, every method's)."""
    import onnx

    from .metadata import read_onnx_metadata

    files: dict[str, tuple[Path, Any, dict[str, Any]]] = {}
    for method in methods:
        chosen = dataclasses.replace(options, method=method)
        path = raw.with_name(f"network.{method}.int8.onnx")
        quantize_network(raw, path, batches, chosen)
        proto = onnx.load(os.fspath(path))
        description = int8_description(chosen, len(batches))
        dataclasses.replace(read_onnx_metadata(proto), int8=description).write_to(proto)
        onnx.save(proto, os.fspath(path))  # marked int8 first: the runtime then runs it as it will run
        if options.quantizer != "nncf":  # not measured, see _faithfulness
            files[method] = (path, proto, description)
            continue
        measured = _faithfulness(raw, path, measure_on, held_out)
        files[method] = (path, proto, description | {"faithfulness": measured.as_dict()})
    # On a tie (a model that scores nothing >= MIN_SCORE measures 0 for both) the first, the
    # rule's method, stays.
    best = next(iter(files)) if len(files) == 1 else min(files, key=lambda m: total_error(files[m][2]["faithfulness"]))
    path, proto, description = files[best]
    if len(files) > 1:
        description["methods_tried"] = {m: files[m][2]["faithfulness"] for m in files}
    dataclasses.replace(read_onnx_metadata(proto), int8=description).write_to(proto)
    onnx.save(proto, os.fspath(path))
    return path


def total_error(faithfulness: dict[str, Any]) -> float:
    """What the range methods are ranked by: score error + box error (of the same order for
    int8 files, so neither swamps the other)."""
    return float(faithfulness["score_error"] + faithfulness["box_error"])


def _prepared(graph: Path, images: Sequence[Any]) -> list[np.ndarray]:
    """Float32 [1, 3, H, W] inputs of ``images``, preprocessed by the graph's own detector."""
    from ..data.images import load_image
    from .runtime import OnnxDetector

    runtime = OnnxDetector(graph, intra_op_threads=1)
    return [runtime.prepare([load_image(image, max_pixels=None)]).inputs.numpy() for image in images]


def _faithfulness(raw: Path, quantized: Path, batches: Sequence[np.ndarray], held_out: bool) -> Faithfulness:
    """Both raw graphs in OpenVINO, the NNCF file's runtime (float in float32), compared on
    ``batches``.

    Files of the ONNX Runtime quantizer are not measured: with ONNX Runtime 1.32, running the
    two extra sessions inside the exporting process was followed by a segfault of that process
    later on (in this project's test suite, 4 runs of 5; docs/quantization.md).
    """
    from .openvino import OpenVinoDetector

    return measure_faithfulness(OpenVinoDetector(raw, precision="f32"), OpenVinoDetector(quantized), batches, held_out)
