"""ONNX export, with or without post-processing (decoding + NMS) inside the graph.

Graph layouts (input ``images`` [N, 3, H, W] float32: resized, normalised, padded as
``efficientdet.preprocess.preprocess_batch`` makes it; N dynamic unless asked otherwise):

* ``include_postprocess=False``: outputs ``cls_logits`` [N, T, K] (class logits, before the
  sigmoid) and ``box_codes`` [N, T, 4] (ty, tx, th, tw), one row per anchor in the order of
  ``efficientdet.ops.anchors`` (level, row, column, anchor). Flattened in the graph because two
  outputs are simpler to consume than two per level, and the transposes cost nothing there;
  ``efficientdet.postprocess`` gives the detections from them (``OnnxDetector`` does).
* ``include_postprocess=True``: outputs ``boxes`` [N, D, 4] float32 xyxy in model-input pixels,
  ``scores`` [N, D] float32, ``labels`` [N, D] int64 and ``num_detections`` [N] int64; rows past
  ``num_detections`` are padding (0, 0, -1). Sigmoid, top-k, decoding with the anchors (a
  constant) and class-wise ONNX ``NonMaxSuppression`` run in the graph: a deployer divides the
  boxes by the resize scale and needs nothing else (``graph.PostprocessGraph``).

The post-processing is exported as its own small graph and joined to the network's graph
with ``onnx.compose`` (:func:`attach_postprocess`): the network part is then the very graph the
raw export gives, and thresholds can be changed on an exported file in seconds.

Exporter: ``torch.onnx.export(dynamo=True)`` (torch.export based, the default since torch 2.9)
with our NMS op translated by ONNX Script; ``dynamo=False`` uses the deprecated TorchScript
exporter, several times faster to run, with the NMS op emitted by a registered symbolic.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from ..config import ModelConfig
from ..ops.anchors import anchors_for_config, feature_size
from .fuse import fuse_batchnorm
from .graph import FlatOutputs, PostprocessGraph, dynamo_translations, register_torchscript_symbolic
from .metadata import NMS_LAYOUT, NMS_OUTPUTS, RAW_LAYOUT, RAW_OUTPUTS, OnnxMetadata, read_onnx_metadata

__all__ = ["ExportError", "attach_postprocess", "check_onnx", "export_onnx"]


# Exporter chatter that says nothing about our graphs: the TorchScript exporter's notes on
# Slice folding and on index (we index with non-negative indices only), the dynamo
# exporter's note that input and output batch axes share one name.
_EXPECTED_WARNINGS = (
    r"Constant folding - Only steps=1",
    r"Exporting aten::index operator",
    r".*The axis name: .* will not be used",
)


class ExportError(RuntimeError):
    """An export that failed, or whose result failed validation (checker, loading, a run)."""


def _image_size(model: nn.Module, config: ModelConfig, image_size: int | tuple[int, int] | None) -> tuple[int, int]:
    if image_size is None:
        size = tuple(config.image_size)
    elif isinstance(image_size, int):
        size = (image_size, image_size)
    else:
        size = tuple(image_size)
    divisor = int(getattr(model, "size_divisor", 32))
    if len(size) != 2 or any(s <= 0 or s % divisor for s in size):
        raise ValueError(f"image_size must be (h, w) with positive multiples of {divisor}, got {image_size}")
    return int(size[0]), int(size[1])


def inference_copy(model: nn.Module, fuse: bool) -> nn.Module:
    """A CPU float32 eval copy of ``model`` to trace (BNs folded when ``fuse``)."""
    model = copy.deepcopy(model).to("cpu", torch.float32).eval()
    return fuse_batchnorm(model, inplace=True) if fuse else model


@contextlib.contextmanager
def _quiet_onnx_ir() -> Iterator[None]:
    """onnx_ir logs a harmless "Attribute type is ambiguous" warning for an empty attribute
    in one of torchlib's translations; keep it out of the user's logs during our exports."""
    logger = logging.getLogger("onnx_ir")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _set_output_shapes(proto: Any, shapes: dict[str, tuple[int | str, ...]]) -> None:
    """Write the known output shapes into the graph (the TorchScript exporter leaves symbolic
    names such as ``Concatcls_logits_dim_1`` for dimensions that are in fact fixed)."""
    for output in proto.graph.output:
        if output.name not in shapes:
            continue
        shape = output.type.tensor_type.shape
        del shape.dim[:]
        for size in shapes[output.name]:
            dim = shape.dim.add()
            if isinstance(size, str):
                dim.dim_param = size
            else:
                dim.dim_value = size


def _to_proto(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    opset: int,
    dynamic_batch: bool,
    dynamo: bool,
) -> Any:
    """Export ``module`` called on ``args`` to an in-memory ``onnx.ModelProto``."""
    import onnx

    with warnings.catch_warnings(), _quiet_onnx_ir():
        # Tracer warnings about Python bools on shapes are expected (the sizes are fixed), and
        # the TorchScript exporter's deprecation is a documented choice of the caller.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        for message in _EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        try:
            if dynamo:
                shapes = tuple({0: torch.export.Dim("batch")} for _ in args) if dynamic_batch else None
                program = torch.onnx.export(
                    module,
                    args,
                    dynamo=True,
                    input_names=input_names,
                    output_names=output_names,
                    opset_version=opset,
                    dynamic_shapes=shapes,
                    custom_translation_table=dynamo_translations(),
                    verbose=False,
                )
                assert program is not None
                return program.model_proto
            register_torchscript_symbolic(opset)
            axes = {name: {0: "batch"} for name in input_names + output_names} if dynamic_batch else None
            buffer = io.BytesIO()
            torch.onnx.export(
                module,
                args,
                buffer,
                dynamo=False,
                input_names=input_names,
                output_names=output_names,
                opset_version=opset,
                dynamic_axes=axes,
            )
            return onnx.load_from_string(buffer.getvalue())
        except Exception as err:
            kind = "dynamo" if dynamo else "TorchScript"
            raise ExportError(f"torch.onnx.export ({kind}) of {type(module).__name__} failed: {err}") from err


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    image_size: int | tuple[int, int] | None = None,
    batch_size: int = 1,
    dynamic_batch: bool = True,
    include_postprocess: bool = False,
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
        opset: ONNX opset, >= 17 (the NMS op needs 10; the exporters' own needs set the floor).
        score_threshold, iou_threshold, max_detections, max_candidates: the in-graph
            post-processing; default the model's ``config.postprocess``. NMS is hard NMS.
        fuse: fold BatchNorms first (both exporters fold them anyway; a fused model traces faster).
        dynamo: the torch.export-based exporter (else the deprecated TorchScript one).
        check: run ``onnx.checker`` and one ONNX Runtime inference; :class:`ExportError` if
            either fails.
    """
    config: ModelConfig | None = getattr(model, "config", None)
    if config is None:
        raise ValueError("the model has no config; build it with efficientdet.create_model")
    if opset < 17:
        raise ValueError(f"opset must be >= 17, got {opset}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    size = _image_size(model, config, image_size)
    net = FlatOutputs(inference_copy(model, fuse), config.num_classes).eval()
    example = torch.zeros(batch_size, 3, *size)
    proto = _to_proto(net, (example,), ["images"], list(RAW_OUTPUTS), opset, dynamic_batch, dynamo)
    batch: int | str = "batch" if dynamic_batch else batch_size
    num_anchors = config.anchors.num_anchors * sum(
        feature_size(size[0], level) * feature_size(size[1], level)
        for level in range(config.anchors.min_level, config.anchors.max_level + 1)
    )
    _set_output_shapes(
        proto, {"cls_logits": (batch, num_anchors, config.num_classes), "box_codes": (batch, num_anchors, 4)}
    )
    class_names = getattr(model, "class_names", None)
    meta = OnnxMetadata(
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
    meta.write_to(proto)
    if include_postprocess:
        proto = _with_postprocess(proto, meta, score_threshold, iou_threshold, max_detections, max_candidates, dynamo)
    return _save(proto, Path(path), batch_size, check)


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
    if meta.nms_inside:
        raise ValueError(f"{src} already has post-processing inside")
    proto = _with_postprocess(proto, meta, score_threshold, iou_threshold, max_detections, max_candidates, dynamo)
    dst = Path(dst) if dst is not None else src.with_name(f"{src.stem}.nms{src.suffix}")
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
    from onnx import compose

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
    batch_size, dynamic_batch = _batch_of(raw)
    opset = next(o.version for o in raw.opset_import if o.domain in ("", "ai.onnx"))
    num_anchors = graph.anchors.shape[0]
    # Random logits: a constant input would make top-k and NMS tie everywhere while tracing.
    g = torch.Generator().manual_seed(0)
    example = (
        torch.randn(batch_size, num_anchors, meta.num_classes, generator=g),
        torch.zeros(batch_size, num_anchors, 4),
    )
    post_proto = _to_proto(graph, example, list(RAW_OUTPUTS), list(NMS_OUTPUTS), opset, dynamic_batch, dynamo)
    batch: int | str = "batch" if dynamic_batch else batch_size
    d = graph.max_detections
    _set_output_shapes(
        post_proto, {"boxes": (batch, d, 4), "scores": (batch, d), "labels": (batch, d), "num_detections": (batch,)}
    )
    # Prefix the post graph's internal names so they cannot collide with the network's; its
    # inputs keep theirs (they are wired to the network's outputs) and so do its outputs.
    post_proto = compose.add_prefix(post_proto, "postprocess/", rename_inputs=False, rename_outputs=False)
    post_proto.ir_version = raw.ir_version
    try:
        merged = compose.merge_models(raw, post_proto, io_map=[(n, n) for n in RAW_OUTPUTS])
    except Exception as err:
        raise ExportError(f"could not join the post-processing graph to the network's: {err}") from err
    # merge_models lists each model's opset imports (the same default-domain entry twice).
    opsets = {o.domain: o.version for o in merged.opset_import}
    del merged.opset_import[:]
    for domain, version in opsets.items():
        merged.opset_import.add(domain=domain, version=version)
    merged.producer_name = raw.producer_name or "efficientdet"
    merged.producer_version = raw.producer_version
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


def _save(proto: Any, path: Path, batch_size: int, check: bool) -> Path:
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(proto, os.fspath(tmp))
    os.replace(tmp, path)  # never leave a half-written file at ``path``
    if check:
        check_onnx(path, batch_size)
    return path


def check_onnx(path: str | os.PathLike[str], batch_size: int = 1) -> list[Any]:
    """``onnx.checker`` + one ONNX Runtime run on zeros; returns the outputs.

    Raises :class:`ExportError` naming the step that failed.
    """
    import numpy as np
    import onnx
    import onnxruntime as ort

    path = os.fspath(path)
    try:
        onnx.checker.check_model(path)
    except Exception as err:  # onnx raises its own ValidationError types
        raise ExportError(f"{path}: onnx.checker rejected the exported model: {err}") from err
    try:
        meta = read_onnx_metadata(path)
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        images = np.zeros((batch_size, 3, *meta.image_size), dtype=np.float32)
        result = session.run(None, {session.get_inputs()[0].name: images})
    except Exception as err:
        raise ExportError(f"{path}: ONNX Runtime could not run the exported model: {err}") from err
    names = [o.name for o in session.get_outputs()]
    if tuple(names) != tuple(meta.outputs):
        raise ExportError(f"{path}: graph outputs {names} do not match the metadata's {list(meta.outputs)}")
    return result
