"""Int8 post-training static quantization of exported graphs (QDQ ONNX files).

The network graph (``export_onnx``'s raw layout) is calibrated on real images run through the
very preprocessing every backend uses, quantized, and only then gets the candidate
pre-selection or the NMS graph attached: those parts stay float, so the int8 file runs in
:class:`~efficientdet.export.OnnxDetector` / ``OpenVinoDetector`` with the same
post-processing as the float one. Two quantizers write the same kind of file (QDQ:
QuantizeLinear / DequantizeLinear pairs around int8 weights, which the runtime fuses into int8
kernels), each placing the pairs where its runtime fuses them:

* ``nncf`` (default): OpenVINO's NNCF (per-image ranges averaged over the images: quantiles
  for Swish networks, min/max for ReLU6 ones, see :func:`resolve_method`; fast bias
  correction), for ``--backend openvino``, which fuses Swish and the squeeze-excite into its
  int8 kernels;
* ``onnxruntime``: ONNX Runtime's ``quantize_static``, for ``--backend onnxruntime``.

Choices (measurements in ``docs/quantization.md``):

* weights int8 per output channel (depthwise convs have a handful of weights per channel:
  one scale per tensor loses them), activations uint8 with a zero point;
* ``reduce_range``: 7-bit weights, for x86 CPUs without VNNI, whose u8 x s8 instruction
  (``vpmaddubsw``) adds pairs of products in int16 and can saturate with 8-bit weights. Default
  (``None``): on when the exporting CPU lacks VNNI. A file exported on a VNNI machine and run
  on an older CPU can saturate there; pass ``reduce_range=True`` for such fleets;
* ``float_groups``: named parts kept in float (see :data:`FLOAT_GROUPS`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CANDIDATES_ABOVE_CLASSES",
    "FLOAT_GROUPS",
    "QUANTIZERS",
    "Int8Options",
    "cpu_has_vnni",
    "export_int8",
    "float_nodes",
    "has_unbounded_activations",
    "int8_candidates",
    "int8_description",
    "quantize_network",
    "quantize_with_nncf",
    "quantize_with_onnxruntime",
    "require_nncf",
    "resolve_method",
]

# Parts of the network that can be kept in float, by name:
#   stem:     the first convolution (sees raw normalised pixels: the widest activation range);
#   heads:    the heads' last layers (per-level depthwise ``predict_dw`` convs and the shared
#             product + bias that give the logits and box codes: their outputs are the scores);
#   fusion:   the BiFPN's weighted-fusion arithmetic (Add / Mul / Div between resampled maps).
FLOAT_GROUPS: tuple[str, ...] = ("stem", "heads", "fusion")
# How activation ranges are taken from the calibration images. "auto" picks per model and
# quantizer (:func:`resolve_method`); NNCF takes "minmax" or "quantile", ONNX Runtime "minmax",
# "percentile" or "entropy".
CALIBRATION_METHODS: tuple[str, ...] = ("auto", "minmax", "quantile", "percentile", "entropy")
_METHODS_OF = {"nncf": ("auto", "minmax", "quantile"), "onnxruntime": ("auto", "minmax", "percentile", "entropy")}
# Activations without an upper bound: their ranges have long tails (Swish in EfficientNet-B*
# backbones and in D0-D7's BiFPN and heads), unlike ReLU6 (the Lite models).
_UNBOUNDED_ACTIVATIONS = frozenset({"SiLU", "Swish", "SwishMe", "SwishAuto", "GELU", "Mish", "MishMe"})
QUANTIZERS: tuple[str, ...] = ("nncf", "onnxruntime")


@dataclass(frozen=True)
class Int8Options:
    """How to quantize; the defaults are what ``efficientdet export --int8`` uses.

    ``quantizer``: ``nncf`` or ``onnxruntime`` (see the module docs); ``calibration_images``:
    images the activation ranges are observed on; ``method``: how a range is taken from them
    (NNCF: ``minmax`` or ``quantile``, each per image and averaged over the images; ONNX
    Runtime: ``minmax`` over all images, ``percentile`` at 99.999, ``entropy``; ``auto``:
    :func:`resolve_method`);
    ``reduce_range``: None = auto (see the module docs); ``per_channel`` (``onnxruntime``
    only; NNCF always quantizes convolution weights per output channel).
    """

    quantizer: str = "nncf"
    calibration_images: int = 100
    method: str = "auto"
    per_channel: bool = True
    reduce_range: bool | None = None
    float_groups: tuple[str, ...] = ("heads",)

    def __post_init__(self) -> None:
        if self.calibration_images < 1:
            raise ValueError(f"--calibration-images must be >= 1, got {self.calibration_images}")
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"unknown quantizer {self.quantizer!r}; valid: {', '.join(QUANTIZERS)}")
        if self.method not in CALIBRATION_METHODS:
            raise ValueError(f"unknown calibration method {self.method!r}; valid: {', '.join(CALIBRATION_METHODS)}")
        if self.method not in _METHODS_OF[self.quantizer]:
            raise ValueError(f"--calibration-method {self.method} does not apply to --quantizer {self.quantizer}; "
                             f"valid: {', '.join(_METHODS_OF[self.quantizer])}")  # fmt: skip
        if self.quantizer == "nncf" and not self.per_channel:
            raise ValueError("per-tensor weights apply to --quantizer onnxruntime; NNCF quantizes weights per channel")
        unknown = sorted(set(self.float_groups) - set(FLOAT_GROUPS))
        if unknown:
            raise ValueError(f"--keep-float: unknown float group(s) {', '.join(unknown)}; valid: {', '.join(FLOAT_GROUPS)}")

    def resolved_reduce_range(self) -> bool:
        return (not cpu_has_vnni()) if self.reduce_range is None else self.reduce_range


def has_unbounded_activations(model: Any) -> bool:
    """Whether ``model`` (a torch module) has an activation without an upper bound (Swish, GELU,
    Mish); False for ReLU/ReLU6 networks such as the Lite models."""
    return any(type(m).__name__ in _UNBOUNDED_ACTIVATIONS for m in model.modules())


def resolve_method(options: Int8Options, model: Any) -> Int8Options:
    """``options`` with ``method="auto"`` made concrete for ``model``.

    NNCF: ``quantile`` (per-image quantiles, averaged) for networks with unbounded activations,
    whose rare extreme values would otherwise stretch the ranges; ``minmax`` (per-image min/max,
    averaged; NNCF's default) for bounded ones, where clipping cuts real signal (raccoon
    measurements in docs/quantization.md). ONNX Runtime: ``minmax``.
    """
    if options.method != "auto":
        return options
    import dataclasses

    quantile = options.quantizer == "nncf" and has_unbounded_activations(model)
    return dataclasses.replace(options, method="quantile" if quantile else "minmax")


def cpu_has_vnni() -> bool:
    """Whether this x86 CPU has an int8 dot-product instruction (AVX512-VNNI or AVX-VNNI).

    Non-x86 machines (ARM's int8 dot products do not saturate) count as having it."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_vnni", "avx_vnni", "avx512vnni", "avxvnni"})
    except OSError:
        pass
    import platform

    return platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686")


def float_nodes(proto: Any, groups: Sequence[str]) -> list[str]:
    """Names of the nodes of the raw network graph ``proto`` (ONNX ModelProto, TorchScript
    exporter's names) that ``groups`` keep in float; a ValueError if a group matches nothing."""
    nodes = list(proto.graph.node)
    picked: list[str] = []
    for group in groups:
        if group == "stem":
            first = next((n for n in nodes if n.op_type == "Conv"), None)
            found = [first.name] if first is not None else []
        elif group == "heads":
            found = [
                n.name for n in nodes
                if "_head/" in n.name and ("predict" in n.name or n.op_type in ("MatMul", "Add"))
            ]  # fmt: skip
        elif group == "fusion":
            found = [n.name for n in nodes if n.name.startswith("/feature_net/") and n.op_type in ("Add", "Mul", "Div")]
        else:
            raise ValueError(f"unknown float group {group!r}; valid: {', '.join(FLOAT_GROUPS)}")
        if not found:
            raise ValueError(f"float group {group!r} matches no node of this graph")
        picked += found
    return picked


# At most this many calibration images have their intermediate outputs held at once; ranges
# (minmax) or histograms (percentile, entropy) are merged between chunks. ONNX Runtime keeps
# every output of every image otherwise: D0 at 512 with 100 images was OOM-killed at ~20 GB.
CALIBRATION_CHUNK = 8


def calibration_stride(count: int, most: int = CALIBRATION_CHUNK) -> int:
    """The largest chunk size <= ``most`` dividing ``count`` (ONNX Runtime's strided calibration
    needs equal chunks)."""
    return max(d for d in range(1, min(most, count) + 1) if count % d == 0)


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over preprocessed batches, with the
    ``len``/``set_range`` its strided (chunked) calibration uses."""

    def __init__(self, input_name: str, batches: Sequence[np.ndarray]) -> None:
        self.input_name = input_name
        self.batches = list(batches)
        self.set_range(0, len(self.batches))

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.pending = iter(self.batches[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.pending, None)
        return None if batch is None else {self.input_name: batch}


def quantize_network(
    raw_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    batches: Sequence[np.ndarray],
    options: Int8Options,
) -> Path:
    """Quantize the raw network graph at ``raw_path`` to ``out_path`` (QDQ, int8 weights) with
    ``options.quantizer``.

    ``batches``: preprocessed float32 [N, 3, H, W] calibration inputs (as ``OnnxDetector.prepare``
    makes them). The caller adds the ``efficientdet.int8`` metadata entry.
    """
    if not batches:
        raise ValueError("no calibration images")
    if options.quantizer == "nncf":
        return quantize_with_nncf(raw_path, out_path, batches, options)
    return quantize_with_onnxruntime(raw_path, out_path, batches, options)


def require_nncf() -> None:
    """A clear error when NNCF (and OpenVINO) are not installed."""
    import importlib.util

    if importlib.util.find_spec("nncf") is None:
        raise ImportError("--quantizer nncf needs NNCF and OpenVINO: pip install 'efficientdet[openvino]' "
                          "(or --quantizer onnxruntime)")  # fmt: skip


def quantize_with_nncf(
    raw_path: str | os.PathLike[str], out_path: str | os.PathLike[str], batches: Sequence[np.ndarray], options: Int8Options
) -> Path:
    """NNCF's post-training quantization of the ONNX graph: symmetric int8 weights per channel,
    activation ranges per image averaged over the images (min/max, or with
    ``options.method == "quantile"`` NNCF's quantiles), fast bias correction."""
    require_nncf()
    import logging

    import nncf
    import onnx
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    nncf.set_log_level(logging.ERROR)
    raw = onnx.load(os.fspath(raw_path))
    input_name = raw.graph.input[0].name
    # OverflowFix.ENABLE halves the weights' range: NNCF's form of reduce_range (no VNNI).
    fix = OverflowFix.ENABLE if options.resolved_reduce_range() else OverflowFix.DISABLE
    excluded = float_nodes(raw, options.float_groups)
    advanced = AdvancedQuantizationParameters(overflow_fix=fix)
    if options.method == "quantile":
        advanced.activations_range_estimator_params = RangeEstimatorParametersSet.MEAN_QUANTILE
    quantized = nncf.quantize(
        raw,
        nncf.Dataset(list(batches), lambda batch: {input_name: batch}),
        subset_size=len(batches),
        ignored_scope=nncf.IgnoredScope(names=excluded) if excluded else None,
        advanced_parameters=advanced,
    )
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(raw.metadata_props)  # the float graph's (NNCF may drop them)
    out = Path(out_path)
    onnx.save(quantized, os.fspath(out))
    return out


def quantize_with_onnxruntime(
    raw_path: str | os.PathLike[str], out_path: str | os.PathLike[str], batches: Sequence[np.ndarray], options: Int8Options
) -> Path:
    """ONNX Runtime's ``quantize_static`` (QDQ, uint8 activations, ``options.method`` ranges),
    calibrated in chunks of :data:`CALIBRATION_CHUNK` images."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from .cache import quiet_onnxruntime

    raw = onnx.load(os.fspath(raw_path))
    excluded = float_nodes(raw, options.float_groups)
    method = {"auto": CalibrationMethod.MinMax, "minmax": CalibrationMethod.MinMax,
              "percentile": CalibrationMethod.Percentile, "entropy": CalibrationMethod.Entropy}[options.method]  # fmt: skip
    reduce_range = options.resolved_reduce_range()
    out = Path(out_path)
    with quiet_onnxruntime():  # else 100+ lines of warnings on every export
        quantize_static(
            os.fspath(raw_path),
            os.fspath(out),
            _Reader(raw.graph.input[0].name, batches),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=options.per_channel,
            reduce_range=reduce_range,
            calibrate_method=method,
            nodes_to_exclude=excluded,
            calibration_providers=["CPUExecutionProvider"],
            extra_options={"CalibTensorRangeSymmetric": False, "CalibPercentile": 99.999,
                           "CalibStridedMinMax": calibration_stride(len(batches))},
        )  # fmt: skip
    return out


def int8_description(options: Int8Options, used_images: int) -> dict[str, Any]:
    """What the ``efficientdet.int8`` metadata entry records."""
    nncf = options.quantizer == "nncf"
    return {
        "format": "QDQ",
        "quantizer": options.quantizer,
        "runtime": "openvino" if nncf else "onnxruntime",
        "weights": "int8 per-channel" if options.per_channel else "int8 per-tensor",
        "activations": "8-bit symmetric" if nncf else "uint8",
        "reduce_range": options.resolved_reduce_range(),
        "calibration": (
            f"nncf {'quantiles' if options.method == 'quantile' else 'min-max'} (mean over images), fast bias correction"
            if nncf else options.method
        ),
        "calibration_images": used_images,
        "float_groups": list(options.float_groups),
    }


# Above this many classes an OpenVINO int8 file pre-selects its candidates in the graph.
CANDIDATES_ABOVE_CLASSES = 16


def int8_candidates(num_classes: int, quantizer: str) -> bool:
    """Whether ``export --int8`` writes the candidates layout (``export_onnx(candidates=True)``)
    rather than the raw [N, T, K] / [N, T, 4] outputs of ``export --format onnx``.

    Only for OpenVINO files (``nncf``) of models with many classes. OpenVINO's TopK of D0's 49k
    anchors costs ~2.5 ms with the max over classes: more than the host's selection from the raw
    outputs of a model with few classes (a fine-tuned one, ~4 ms faster end to end raw), less
    than the host's scan of T*K logits with COCO's 90 (~10 ms faster pre-selected); the A/B is in
    docs/quantization.md. ONNX Runtime files keep the raw layout.
    """
    return quantizer == "nncf" and num_classes > CANDIDATES_ABOVE_CLASSES


def export_int8(
    model: Any,
    path: str | os.PathLike[str],
    calibration: Sequence[Any],
    options: Int8Options | None = None,
    *,
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

    ``calibration``: images (uint8 [3, H, W] tensors, ``ReducedImage`` objects or anything ``load_image``
    takes; paths decoded as ``load_for_model`` does for the graph's input size), each preprocessed
    exactly as ``OnnxDetector.prepare`` does at run time. The layouts are
    ``export_onnx``'s (raw, ``include_postprocess``, ``candidates``; ``candidates=None``: the
    faster one for the quantizer's runtime, :func:`int8_candidates`, unless NMS is inside);
    only the network is quantized, the post-processing parts stay float.
    """
    import onnx

    from ..data.images import load_for_model
    from ..fs import atomic_path
    from .calibration import calibration_groups
    from .onnx import attach_candidates, attach_postprocess, check_onnx, export_onnx
    from .runtime import OnnxDetector

    options = resolve_method(options or Int8Options(), model)
    if not calibration:
        raise ValueError("--calibration: no calibration images")
    candidates = _int8_layout(model, options, include_postprocess, candidates)
    with tempfile.TemporaryDirectory(prefix="efficientdet-int8-") as tmp:
        raw, quantized = Path(tmp) / "network.onnx", Path(tmp) / "network.int8.onnx"
        # The TorchScript exporter: its node names are what the float groups match.
        export_onnx(model, raw, image_size, batch_size, dynamic_batch, dynamo=False, check=False)
        runtime = OnnxDetector(raw, intra_op_threads=1)
        # Decoded as the detectors decode for this input size (large JPEGs reduced): the ranges
        # are then observed on the very pixels the int8 model is fed at run time.
        size = runtime.decode_size
        groups = calibration_groups(calibration, 1 if dynamic_batch else batch_size)  # static: batch_size each
        batches = [runtime.prepare([load_for_model(i, size, max_pixels=None) for i in g]).inputs.numpy() for g in groups]
        del runtime
        quantize_network(raw, quantized, batches, options)
        proto = _add_int8_metadata(quantized, options, len(calibration))
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


def _int8_layout(model: Any, options: Int8Options, include_postprocess: bool, candidates: bool | None) -> bool:
    """Whether the int8 file gets the candidates layout (``candidates=None``: :func:`int8_candidates`
    decides, unless NMS is inside)."""
    if candidates is None:
        candidates = not include_postprocess and int8_candidates(model.config.num_classes, options.quantizer)
    if include_postprocess and candidates:
        raise ValueError("include_postprocess and candidates are exclusive: NMS inside needs no pre-selection")
    return candidates


def _add_int8_metadata(quantized: Path, options: Int8Options, used_images: int) -> Any:
    """Record how the graph at ``quantized`` was quantized in its metadata (in place); returns the graph."""
    import dataclasses

    import onnx

    from .metadata import read_onnx_metadata

    proto = onnx.load(os.fspath(quantized))
    meta = dataclasses.replace(read_onnx_metadata(proto), int8=int8_description(options, used_images))
    meta.write_to(proto)
    onnx.save(proto, os.fspath(quantized))
    return proto
