"""ONNX export, with or without post-processing (decoding + NMS) inside the graph.

Graph layouts (input ``images`` [N, 3, H, W] float32: resized, normalised, padded as
``efficientdet.inference.preprocess.preprocess_batch`` makes it; N dynamic unless asked otherwise):

* ``include_postprocess=False``: outputs ``cls_logits`` [N, T, K] (class logits, before the
  sigmoid) and ``box_codes`` [N, T, 4] (ty, tx, th, tw), one row per anchor in the order of
  ``efficientdet.ops.anchors`` (level, row, column, anchor). Flattened in the graph because two
  outputs are simpler to consume than two per level; the heads' last conv is one matrix
  product producing that layout directly (``ort_graph.FlatHead``), so flattening costs nothing.
  ``efficientdet.inference.postprocess`` gives the detections from them (``OnnxDetector`` does).
* ``include_postprocess=True``: outputs ``boxes`` [N, D, 4] float32 xyxy in model-input pixels,
  ``scores`` [N, D] float32, ``labels`` [N, D] int64 and ``num_detections`` [N] int64; rows past
  ``num_detections`` are padding (0, 0, -1). Sigmoid, top-k, decoding with the anchors (a
  constant) and class-wise ONNX ``NonMaxSuppression`` run in the graph: a deployer divides the
  boxes by the resize scale and needs nothing else (``graph.PostprocessGraph``).
* ``candidates=True``: outputs ``cand_logits`` [N, C, K], ``cand_codes`` [N, C, 4] and
  ``cand_anchors`` [N, C] int64: the rows of the C = ``max_candidates`` anchors with the largest
  class logit (``graph.CandidateGraph``). ``postprocess_candidates`` gives exactly the detections
  of the raw outputs from them; the CLI's ``--backend onnxruntime`` exports this form.

The post-processing is exported as its own small graph and joined to the network's graph
with ``onnx.compose`` (:func:`attach_postprocess`): the network part is then the very graph the
raw export gives, and thresholds can be changed on an exported file in seconds.

Exporter: ``torch.onnx.export(dynamo=True)`` (torch.export based, the default since torch 2.9)
with our NMS op translated by ONNX Script; ``dynamo=False`` uses the deprecated TorchScript
exporter, several times faster to run, with the NMS op emitted by a registered symbolic.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import ModelConfig
from ..fs import atomic_path
from ..ops.anchors import anchors_for_config, feature_size
from .graph import CandidateGraph, PostprocessGraph
from .metadata import (
    CANDIDATE_LAYOUT,
    CANDIDATE_OUTPUTS,
    NMS_LAYOUT,
    NMS_OUTPUTS,
    RAW_LAYOUT,
    RAW_OUTPUTS,
    OnnxMetadata,
    read_onnx_metadata,
)
from .onnx_passes import ceil_pools_to_pads, fold_pads, reduce_means_to_pools
from .ort_graph import export_network
from .tracing import ExportError, image_size_for, inference_copy, set_output_shapes, to_proto

__all__ = ["ExportError", "attach_candidates", "attach_postprocess", "check_onnx", "export_onnx"]


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    image_size: int | tuple[int, int] | None = None,
    batch_size: int = 1,
    dynamic_batch: bool = True,
    include_postprocess: bool = False,
    candidates: bool = False,
    opset: int = 18,
    score_threshold: float | None = None,
    iou_threshold: float | None = None,
    max_detections: int | None = None,
    max_candidates: int | None = None,
    fuse: bool = True,
    dynamo: bool = True,
    check: bool = True,
) -> Path:
    """Export an ``EfficientDet`` to ONNX at ``path`` (one self-contained file); returns the path.

    Args:
        image_size: the graph's fixed input size (h, w) or a side; default the model's. Sides
            must be multiples of 32. Anchors depend on it, so it is not dynamic.
        batch_size: batch of the example input (and of the graph unless ``dynamic_batch``).
        include_postprocess: decoding and NMS inside the graph (see the module docs).
        candidates: instead, pre-select in the graph the ``max_candidates`` anchors with the
            largest class logit (``graph.CandidateGraph``); ``OnnxDetector`` finishes the exact
            post-processing from those ~10x smaller outputs (the ``--backend onnxruntime`` form).
        opset: ONNX opset, >= 17 (the NMS op needs 10; the exporters' own needs set the floor).
        score_threshold, iou_threshold, max_detections, max_candidates: the in-graph
            post-processing; default the model's ``config.postprocess``. NMS is hard NMS.
        fuse: fold BatchNorms first (both exporters fold them anyway; a fused model traces faster).
            Independently of it, the graph is laid out for ONNX Runtime's CPU kernels
            (``ort_graph.py``: constant BiFPN fusion weights, heads' last conv as one product,
            heads' BNs folded per level; ``onnx_passes.py``: zero Pads folded into convs).
        dynamo: the torch.export-based exporter (else the deprecated TorchScript one).
        check: run ``onnx.checker`` and one ONNX Runtime inference; :class:`ExportError` if
            either fails.
    """
    config = _checked_config(model, opset, batch_size)
    size = image_size_for(model, config, image_size)
    # Rewritten for ONNX Runtime's blocked CPU layout (ort_graph.py): same outputs up to rounding.
    net = export_network(inference_copy(model, fuse), config.num_classes)
    example = torch.zeros(batch_size, 3, *size)
    proto = to_proto(net, (example,), ["images"], list(RAW_OUTPUTS), opset, dynamic_batch, dynamo)
    _apply_passes(proto)
    _set_raw_output_shapes(proto, config, size, "batch" if dynamic_batch else batch_size)
    meta = _raw_metadata(model, config, size)
    meta.write_to(proto)
    if include_postprocess and candidates:
        raise ValueError("include_postprocess and candidates are exclusive: NMS inside needs no pre-selection")
    if include_postprocess:
        proto = _with_postprocess(proto, meta, score_threshold, iou_threshold, max_detections, max_candidates, dynamo)
    elif candidates:
        proto = _with_candidates(proto, meta, max_candidates, dynamo)
    return _save(proto, Path(path), batch_size, check)


def _checked_config(model: nn.Module, opset: int, batch_size: int) -> ModelConfig:
    """``model``'s config, once the export options are checked."""
    config: ModelConfig | None = getattr(model, "config", None)
    if config is None:
        raise ValueError("the model has no config; build it with efficientdet.create_model")
    if opset < 17:
        raise ValueError(f"opset must be >= 17, got {opset}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return config


def _apply_passes(proto: Any) -> None:
    """The ``onnx_passes`` rewrites of an exported network graph (in place)."""
    fold_pads(proto)  # the TorchScript exporter's explicit "same" padding
    reduce_means_to_pools(proto)  # squeeze-excite means: a quantized kernel, ORT's blocked layout
    ceil_pools_to_pads(proto)  # overhanging pool windows as pads: OpenVINO reads them


def _set_raw_output_shapes(proto: Any, config: ModelConfig, size: tuple[int, int], batch: int | str) -> None:
    """Declare the raw outputs' shapes: ``cls_logits`` [batch, T, K], ``box_codes`` [batch, T, 4]."""
    num_anchors = config.anchors.num_anchors * sum(
        feature_size(size[0], level) * feature_size(size[1], level)
        for level in range(config.anchors.min_level, config.anchors.max_level + 1)
    )
    set_output_shapes(
        proto, {"cls_logits": (batch, num_anchors, config.num_classes), "box_codes": (batch, num_anchors, 4)}
    )


def _raw_metadata(model: nn.Module, config: ModelConfig, size: tuple[int, int]) -> OnnxMetadata:
    """The metadata of ``model``'s network graph (raw outputs) at input ``size``."""
    class_names = getattr(model, "class_names", None)
    return OnnxMetadata(
        model_name=config.name,
        image_size=size,
        mean=tuple(config.preprocess.mean),  # type: ignore[arg-type]
        std=tuple(config.preprocess.std),  # type: ignore[arg-type]
        num_classes=config.num_classes,
        class_names=list(class_names) if class_names else None,
        nms_inside=False,
        output_layout=RAW_LAYOUT,
        outputs=RAW_OUTPUTS,
        config=config.replace(image_size=size),
    )


def attach_postprocess(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str] | None = None,
    score_threshold: float | None = None,
    iou_threshold: float | None = None,
    max_detections: int | None = None,
    max_candidates: int | None = None,
    dynamo: bool = True,
    check: bool = True,
) -> Path:
    """Add decoding + NMS to a graph exported without them (``src``), writing ``dst``
    (default: ``src`` with ``.nms`` before the suffix); returns ``dst``.

    Thresholds default to the exported model's ``config.postprocess``. Only the small
    post-processing graph is exported, so this takes seconds, not the network's export time.
    """
    import onnx

    src = Path(src)
    proto = onnx.load(os.fspath(src))
    meta = read_onnx_metadata(proto)
    fold_pads(proto)  # no-op on graphs export_onnx wrote
    if meta.nms_inside or meta.candidates:
        raise ValueError(f"{src} already has post-processing inside")
    proto = _with_postprocess(proto, meta, score_threshold, iou_threshold, max_detections, max_candidates, dynamo)
    dst = Path(dst) if dst is not None else src.with_name(f"{src.stem}.nms{src.suffix}")
    return _save(proto, dst, _batch_of(proto)[0], check)


def attach_candidates(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str] | None = None,
    max_candidates: int | None = None,
    dynamo: bool = True,
    check: bool = True,
) -> Path:
    """Add the candidate pre-selection (``export_onnx(candidates=True)``) to a raw graph
    ``src``, writing ``dst`` (default: ``src`` with ``.candidates`` before the suffix)."""
    import onnx

    src = Path(src)
    proto = onnx.load(os.fspath(src))
    meta = read_onnx_metadata(proto)
    if meta.nms_inside or meta.candidates:
        raise ValueError(f"{src} already has post-processing inside")
    proto = _with_candidates(proto, meta, max_candidates, dynamo)
    dst = Path(dst) if dst is not None else src.with_name(f"{src.stem}.candidates{src.suffix}")
    return _save(proto, dst, _batch_of(proto)[0], check)


def _batch_of(proto: Any) -> tuple[int, bool]:
    """(batch size to run with, whether the batch is dynamic) of a graph's first input."""
    dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    fixed = dim.HasField("dim_value")
    return (int(dim.dim_value) if fixed else 1), not fixed


def _with_postprocess(
    raw: Any,
    meta: OnnxMetadata,
    score_threshold: float | None,
    iou_threshold: float | None,
    max_detections: int | None,
    max_candidates: int | None,
    dynamo: bool,
) -> Any:
    """``raw`` (network graph, outputs ``cls_logits``/``box_codes``) joined to an exported
    :class:`PostprocessGraph`; returns the combined ``ModelProto`` with updated metadata."""
    post = meta.config.postprocess
    if post.nms != "hard":
        warnings.warn(f"the model's post-processing uses {post.nms} NMS; the ONNX graph does hard NMS", stacklevel=3)
    graph = PostprocessGraph(
        anchors_for_config(meta.config.anchors, meta.image_size),
        meta.num_classes,
        meta.image_size,
        max_candidates if max_candidates is not None else post.max_candidates,
        score_threshold if score_threshold is not None else post.score_threshold,
        iou_threshold if iou_threshold is not None else post.iou_threshold,
        max_detections if max_detections is not None else post.max_detections,
    ).eval()
    num_anchors = graph.anchors.shape[0]
    d = graph.max_detections
    merged = _join(raw, graph, num_anchors, meta.num_classes, dynamo, {
        "boxes": (d, 4), "scores": (d,), "labels": (d,), "num_detections": (),
    })  # fmt: skip
    post_meta = {
        "max_candidates": graph.k,
        "score_threshold": graph.score_threshold,
        "iou_threshold": graph.iou_threshold,
        "max_detections": graph.max_detections,
        "nms": "hard",
    }
    new_meta = dataclasses.replace(
        meta, nms_inside=True, output_layout=NMS_LAYOUT, outputs=NMS_OUTPUTS, postprocess=post_meta
    )
    new_meta.write_to(merged)
    return merged


def _with_candidates(raw: Any, meta: OnnxMetadata, max_candidates: int | None, dynamo: bool) -> Any:
    """``raw`` joined to a :class:`CandidateGraph` keeping the ``max_candidates`` best anchors."""
    num_anchors = len(anchors_for_config(meta.config.anchors, meta.image_size))
    wanted = max_candidates if max_candidates is not None else meta.config.postprocess.max_candidates
    c = max(1, min(wanted, num_anchors))
    merged = _join(raw, CandidateGraph(c).eval(), num_anchors, meta.num_classes, dynamo, {
        "cand_logits": (c, meta.num_classes), "cand_codes": (c, 4), "cand_anchors": (c,),
    })  # fmt: skip
    new_meta = dataclasses.replace(
        meta, output_layout=CANDIDATE_LAYOUT, outputs=CANDIDATE_OUTPUTS, postprocess={"max_candidates": c}
    )
    new_meta.write_to(merged)
    return merged


def _join(
    raw: Any, graph: nn.Module, num_anchors: int, num_classes: int, dynamo: bool, shapes: dict[str, tuple[int, ...]]
) -> Any:
    """``raw`` (outputs ``cls_logits``/``box_codes``) with ``graph`` (exported on its own) fed by
    them; ``shapes``: the outputs of ``graph`` in order, each shape without the batch dim."""
    from onnx import compose

    batch_size, dynamic_batch = _batch_of(raw)
    opset = next(o.version for o in raw.opset_import if o.domain in ("", "ai.onnx"))
    # Random logits: a constant input would make top-k and NMS tie everywhere while tracing.
    g = torch.Generator().manual_seed(0)
    example = (
        torch.randn(batch_size, num_anchors, num_classes, generator=g),
        torch.zeros(batch_size, num_anchors, 4),
    )
    part = to_proto(graph, example, list(RAW_OUTPUTS), list(shapes), opset, dynamic_batch, dynamo)
    batch: int | str = "batch" if dynamic_batch else batch_size
    set_output_shapes(part, {name: (batch, *shape) for name, shape in shapes.items()})
    # Prefix the part's internal names so they cannot collide with the network's; its inputs
    # keep theirs (they are wired to the network's outputs) and so do its outputs.
    part = compose.add_prefix(part, "postprocess/", rename_inputs=False, rename_outputs=False)
    part.ir_version = raw.ir_version
    try:
        merged = compose.merge_models(raw, part, io_map=[(n, n) for n in RAW_OUTPUTS])
    except Exception as err:
        raise ExportError(f"could not join the post-processing graph to the network's: {err}") from err
    # merge_models lists each model's opset imports (the same default-domain entry twice).
    opsets = {o.domain: o.version for o in merged.opset_import}
    del merged.opset_import[:]
    for domain, version in opsets.items():
        merged.opset_import.add(domain=domain, version=version)
    merged.producer_name = raw.producer_name or "efficientdet"
    merged.producer_version = raw.producer_version
    return merged


def _save(proto: Any, path: Path, batch_size: int, check: bool) -> Path:
    import onnx

    with atomic_path(path) as tmp:  # never leave a half-written or failing file at ``path``
        onnx.save(proto, os.fspath(tmp))
        if check:
            check_onnx(tmp, batch_size, label=path)
    return path


def check_onnx(
    path: str | os.PathLike[str], batch_size: int = 1, label: str | os.PathLike[str] | None = None
) -> list[Any]:
    """``onnx.checker`` + one run on zeros in the graph's runtime (ONNX Runtime; OpenVINO for
    int8 graphs quantized for it); returns the outputs. ``label``: the name errors give the file
    (default ``path``; a temp file checked before it is renamed into place has another).

    Raises :class:`ExportError` naming the step that failed.
    """
    import numpy as np
    import onnx

    path = os.fspath(path)
    name = os.fspath(label) if label is not None else path
    try:
        onnx.checker.check_model(path)
    except Exception as err:  # onnx raises its own ValidationError types
        raise ExportError(f"{name}: onnx.checker rejected the exported model: {err}") from err
    meta = read_onnx_metadata(path)
    images = np.zeros((batch_size, 3, *meta.image_size), dtype=np.float32)
    if (meta.int8 or {}).get("runtime") == "openvino":
        return _check_openvino(path, name, meta, images)
    import onnxruntime as ort

    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only, as OnnxDetector's (no per-initializer warnings)
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        result = session.run(None, {session.get_inputs()[0].name: images})
    except Exception as err:
        raise ExportError(f"{name}: ONNX Runtime could not run the exported model: {err}") from err
    names = [o.name for o in session.get_outputs()]
    if tuple(names) != tuple(meta.outputs):
        raise ExportError(f"{name}: graph outputs {names} do not match the metadata's {list(meta.outputs)}")
    for out, value in zip(session.get_outputs(), result):
        # The declared shapes are computed from the config; a graph that computes other sizes
        # (ONNX Runtime only logs a warning then) traced some shape arithmetic wrongly.
        declared = [d if isinstance(d, int) else None for d in out.shape]
        if len(declared) != value.ndim or any(d is not None and d != v for d, v in zip(declared, value.shape)):
            raise ExportError(f"{name}: output {out.name} has shape {list(value.shape)}, expected {out.shape}")
    return result


def _check_openvino(path: str, name: str, meta: OnnxMetadata, images: Any) -> list[Any]:
    """One OpenVINO run of an int8 graph quantized for it (ONNX Runtime cannot run every
    NNCF graph: per-channel activation zero points)."""
    try:
        import openvino as ov

        core = ov.Core()
        graph = core.read_model(path)
        graph.reshape({graph.input(0): list(images.shape)})
        request = core.compile_model(graph, "CPU").create_infer_request()
        outputs = request.infer({0: images})
        result = [outputs[o] for o in request.model_outputs]
        names = [o.get_any_name() for o in request.model_outputs]
    except Exception as err:
        raise ExportError(f"{name}: OpenVINO could not run the exported model: {err}") from err
    if tuple(names) != tuple(meta.outputs):
        raise ExportError(f"{name}: graph outputs {names} do not match the metadata's {list(meta.outputs)}")
    return result
