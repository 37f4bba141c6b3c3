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

__all__ = ["HOLDOUT_IMAGES", "export_int8"]

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
    from .metadata import read_onnx_metadata
    from .onnx import attach_candidates, attach_postprocess, check_onnx, export_onnx

    options = resolve_method(options or Int8Options(), model)
    if not calibration:
        raise ValueError("--calibration: no calibration images")
    if candidates is None:
        candidates = not include_postprocess and int8_candidates(model.config.num_classes, options.quantizer)
    if include_postprocess and candidates:
        raise ValueError("include_postprocess and candidates are exclusive: NMS inside needs no pre-selection")
    with tempfile.TemporaryDirectory(prefix="efficientdet-int8-") as tmp:
        raw, quantized = Path(tmp) / "network.onnx", Path(tmp) / "network.int8.onnx"
        # The TorchScript exporter: its node names are what the float groups match.
        export_onnx(model, raw, image_size, batch_size, dynamic_batch, dynamo=False, check=False)
        batches = _prepared(raw, calibration)
        quantize_network(raw, quantized, batches, options)
        proto = onnx.load(os.fspath(quantized))
        meta = dataclasses.replace(read_onnx_metadata(proto), int8=int8_description(options, len(batches)))
        meta.write_to(proto)
        onnx.save(proto, os.fspath(quantized))  # marked int8 first: the runtime then runs it as it will run
        held = list(holdout)[:HOLDOUT_IMAGES]
        measured = _faithfulness(raw, quantized, _prepared(raw, held) if held else batches[:HOLDOUT_IMAGES],
                                 options.quantizer, held_out=bool(held))  # fmt: skip
        dataclasses.replace(meta, int8={**(meta.int8 or {}), "faithfulness": measured.as_dict()}).write_to(proto)
        onnx.save(proto, os.fspath(quantized))
        out = Path(path)
        if include_postprocess:
            return attach_postprocess(
                quantized, out, score_threshold=score_threshold, max_detections=max_detections, dynamo=False, check=check
            )
        if candidates:
            return attach_candidates(quantized, out, dynamo=False, check=check)
        with atomic_path(out) as dst:
            onnx.save(proto, os.fspath(dst))
            if check:
                check_onnx(dst, batch_size, label=out)
        return out


def _prepared(graph: Path, images: Sequence[Any]) -> list[np.ndarray]:
    """Float32 [1, 3, H, W] inputs of ``images``, preprocessed by the graph's own detector."""
    from ..data.images import load_image
    from .runtime import OnnxDetector

    runtime = OnnxDetector(graph, intra_op_threads=1)
    return [runtime.prepare([load_image(image, max_pixels=None)]).inputs.numpy() for image in images]


def _faithfulness(raw: Path, quantized: Path, batches: Sequence[np.ndarray], quantizer: str, held_out: bool) -> Faithfulness:
    """Both raw graphs in the int8 file's runtime (float in float32), compared on ``batches``."""
    if quantizer == "nncf":
        from .openvino import OpenVinoDetector

        return measure_faithfulness(OpenVinoDetector(raw, precision="f32"), OpenVinoDetector(quantized), batches, held_out)
    from .runtime import OnnxDetector

    return measure_faithfulness(OnnxDetector(raw), OnnxDetector(quantized), batches, held_out)
